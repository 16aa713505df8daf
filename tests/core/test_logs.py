"""Logging: JSON lines off a terminal, and no patient identifier ever reaches a line."""

from __future__ import annotations

import io
import json
import logging

import pydicom
from pydicom.dataset import Dataset

from aenode.logs import configure_logging, get_logger, identifiers_of, phi_values

CANARY = "CANARY^PHI^SHOULD^NOT^LEAK"


def canary_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = CANARY
    ds.PatientID = "MRN-CANARY-0001"
    ds.PatientBirthDate = "19010203"
    ds.AccessionNumber = "ACC-CANARY-77"
    ds.OtherPatientIDs = ["OPID-CANARY-1", "OPID-CANARY-2"]
    ds.StudyInstanceUID = "1.2.3.4"
    return ds


def capture() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    return stream


def assert_clean(text: str) -> None:
    for needle in ("CANARY", "MRN-CANARY", "19010203", "ACC-CANARY", "OPID-CANARY"):
        assert needle not in text, f"{needle!r} leaked into: {text}"


def test_json_lines_and_key_redaction() -> None:
    stream = capture()
    get_logger("t").info("stored", patient_name=CANARY, PatientID="MRN-CANARY-0001", study="1.2.3.4", n=3)
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "stored" and line["study"] == "1.2.3.4" and line["n"] == 3
    assert line["level"] == "info" and "timestamp" in line
    assert_clean(stream.getvalue())


def test_registered_values_scrubbed_inside_exception_messages() -> None:
    stream = capture()
    ds = canary_dataset()
    with phi_values(identifiers_of(ds)):
        try:
            raise ValueError(f"bad header for {ds.PatientName} ({ds.PatientID}) acc {ds.AccessionNumber}")
        except ValueError:
            get_logger("t").exception("decode failed", detail=f"patient {ds.OtherPatientIDs[1]}")
    text = stream.getvalue()
    assert "decode failed" in text and "ValueError" in text and "[REDACTED]" in text
    assert_clean(text)


def test_dataset_dump_scrubbed_without_registration() -> None:
    stream = capture()
    get_logger("t").warning("odd dataset", dump=str(canary_dataset()), also=repr(canary_dataset()["PatientName"]))
    text = stream.getvalue()
    assert "1.2.3.4" in text  # non-PHI survives
    assert_clean(text)


def test_stdlib_loggers_go_through_the_scrubber() -> None:
    stream = capture()
    ds = canary_dataset()
    logging.getLogger("pynetdicom.test").warning("received %s", str(ds))
    with phi_values(identifiers_of(ds)):
        logging.getLogger("somelib").error("failed on %s", ds.PatientName)
    text = stream.getvalue()
    assert "received" in text and "failed on" in text
    assert_clean(text)


def test_name_variants_scrubbed() -> None:
    stream = capture()
    with phi_values([CANARY]):
        get_logger("t").info("x", msg="Patient CANARY PHI SHOULD NOT LEAK; also Phi")
    assert_clean(stream.getvalue())


def test_identifiers_of_reads_file_header(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = canary_dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    path = tmp_path / "x.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    values = identifiers_of(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    assert CANARY in values and "OPID-CANARY-2" in values and "ACC-CANARY-77" in values
