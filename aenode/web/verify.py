"""Re-issue a result's SR as a VERIFIED revision after a radiologist confirmed it.

Only when ``[web] reissue_verified_sr = true`` and the radiologist *agrees* with the AI
category: a verified SR attests its content, and the content is the AI's finding, so a
correction is stored (``web.sqlite``, audit log) but never turned into a verified SR.

The new SR is a copy of the stored unverified one (``r<rev>/sr.dcm``) with
VerificationFlag VERIFIED, a Verifying Observer (login name, node name, time; the
radiologist's ID as the observer's identification code), PreliminaryFlag FINAL, a new
deterministic SOP Instance UID in the same SR series, and the unverified SR in the
Predecessor Documents Sequence.  It is written atomically beside the original
(``sr-verified-<confirmation id>.dcm``) and enqueued for every destination through
:mod:`aenode.deliver.publish`.
"""

from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import enqueue_results
from aenode.logs import get_logger
from aenode.report.publish import write_dataset
from aenode.report.uids import derived_uid

log = get_logger("aenode.web")

USER_SCHEME = "99AENODEUSR"


def build_verified_sr(sr: Dataset, *, radiologist_id: str, user: str, organization: str,
                      confirmation_id: int, at: float) -> Dataset:
    ds = copy.deepcopy(sr)
    when = _dt.datetime.fromtimestamp(at).astimezone()
    new_uid = UID(derived_uid("aenode-verified-sr", str(sr.SOPInstanceUID), str(confirmation_id)))
    ds.SOPInstanceUID = new_uid
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    ds.InstanceNumber = int(sr.get("InstanceNumber", 1) or 1) + 100
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    ds.VerificationFlag = "VERIFIED"
    ds.PreliminaryFlag = "FINAL"
    observer = Dataset()
    observer.VerifyingObserverName = user[:64].replace("\\", " ")
    observer.VerifyingOrganization = organization[:64]
    observer.VerificationDateTime = when.strftime("%Y%m%d%H%M%S%z")
    code = Dataset()
    if len(radiologist_id) <= 16:
        code.CodeValue = radiologist_id
    else:
        code.LongCodeValue = radiologist_id
    code.CodingSchemeDesignator = USER_SCHEME
    code.CodeMeaning = f"Radiologist {radiologist_id}"[:64]
    observer.VerifyingObserverIdentificationCodeSequence = Sequence([code])
    ds.VerifyingObserverSequence = Sequence([observer])
    schemes = list(ds.get("CodingSchemeIdentificationSequence", []))
    if not any(s.get("CodingSchemeDesignator") == USER_SCHEME for s in schemes):
        item = Dataset()
        item.CodingSchemeDesignator = USER_SCHEME
        item.CodingSchemeName = "aenode user identifiers"
        item.CodingSchemeResponsibleOrganization = organization[:64]
        schemes.append(item)
        ds.CodingSchemeIdentificationSequence = Sequence(schemes)
    pred_series = Dataset()
    pred_series.SeriesInstanceUID = sr.SeriesInstanceUID
    ref = Dataset()
    ref.ReferencedSOPClassUID = sr.SOPClassUID
    ref.ReferencedSOPInstanceUID = sr.SOPInstanceUID
    pred_series.ReferencedSOPSequence = Sequence([ref])
    pred = Dataset()
    pred.StudyInstanceUID = sr.StudyInstanceUID
    pred.ReferencedSeriesSequence = Sequence([pred_series])
    ds.PredecessorDocumentsSequence = Sequence([pred])
    return ds


def reissue_verified_sr(config: Config, result_dir: Path, study_uid: str, *, outbox: Outbox, radiologist_id: str,
                        user: str, confirmation_id: int, at: float) -> Path:
    """Write and enqueue the verified SR; returns its path.  FileNotFoundError if the
    result has no SR."""
    src = Path(result_dir) / "sr.dcm"
    sr = dcmread(src)
    out = Path(result_dir) / f"sr-verified-{int(confirmation_id)}.dcm"
    if not out.is_file():
        write_dataset(build_verified_sr(sr, radiologist_id=radiologist_id, user=user,
                                        organization=config.node.name, confirmation_id=confirmation_id, at=at),
                      out)
    enqueue_results(config, [out], study_uid, outbox=outbox)
    log.info("verified_sr_issued", study_uid=study_uid, confirmation=confirmation_id)
    return out
