"""De-identification for research export: DICOM PS3.15 Annex E.

Profile: Basic Application Level Confidentiality Profile with the *Retain Longitudinal
Temporal Information with Modified Dates*, *Retain Patient Characteristics* and *Clean
Descriptors* options (PS3.16 CID 7050 codes 113100, 113107, 113108, 113105).

Library choice.  The profile's per-attribute actions (D, Z, X, U, their combinations) come
from ``dicom-anonymizer`` (KitwareMedical, ``dicomanonymizer``), which ships Table E.1-1 of
the current standard as data (``dicomfields_2026c``) and the action functions, and lets
each action be overridden per tag -- which is exactly what the profile's options are.
Compared (issue 13):

* ``dicognito`` is maintained and typed, but it is a pseudonymiser of its own design:
  names, IDs and addresses become plausible fake values, descriptions and most
  Annex E attributes it does not know are kept, and its date offset is one per
  ``Anonymizer``.  It does not follow Table E.1-1, so it cannot claim the profile.
* ``deid`` (pydicom/deid) is recipe-driven; its default recipe is "best effort" (broad
  ``REMOVE endswith:Date`` patterns), not Table E.1-1, and its UID/date functions need
  custom recipe code anyway.  Its strength is pixel-cleaning filters, which we do not
  use: burned-in annotation is refused instead (we never claim Clean Pixel Data).
* ``dicom-anonymizer`` carries the standard's table itself, so the attribute list is
  the standard's, updated with each release of the package.  Its UID and date actions
  are replaced here (they are random per process and "00010101" respectively), because
  re-export must give the same UIDs and dates shifted per patient are an option we claim.

What this module adds around the library: UIDs remapped with the site's secret (HMAC,
the ``2.25`` UUID form, same input -> same output across runs), per-patient date
shift, pseudonymous patient name/ID, the option-specific keeps, descriptor cleaning
with a safe vocabulary, private tags removed except a short safe list, a final sweep
(every person name emptied), the action applied inside every sequence item (the library
applies its table to one dataset level only), the PS3.15 marks and the burned-in refusal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from dicomanonymizer import simpledicomanonymizer as sda  # type: ignore[import-untyped]
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from aenode.store.marks import is_node_output

PROFILE_TABLE = "dicomfields_2026c"   # Table E.1-1 as shipped by dicom-anonymizer 2.1
DICOM_ROOT = "1.2.840.10008."         # registry UIDs (SOP classes, transfer syntaxes) stay

# PS3.16 CID 7050 "De-identification Method": (code, meaning)
METHOD_CODES: tuple[tuple[str, str], ...] = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113105", "Clean Descriptors Option"),
)
METHOD_TEXT = ["PS3.15 E.1 Basic Profile", "Modified Dates", "Retain Patient Characteristics",
               "Clean Descriptors", f"dicom-anonymizer {PROFILE_TABLE}"]

# Retain Patient Characteristics Option: the attributes Table E.1-1 marks "K" for it (the
# ones it marks "C", e.g. Allergies, Medical Alerts, stay removed: free text).
PATIENT_CHARACTERISTICS = ("PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
                           "PregnancyStatus", "SmokingStatus", "PatientSexNeutered")

# Clean Descriptors Option: these are kept but only with words from a safe vocabulary
# (technique and anatomy); anything else (a name typed into a description) is dropped.
DESCRIPTORS = ("StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
               "RequestedProcedureDescription", "ScheduledProcedureStepDescription", "ImageComments",
               "DerivationDescription", "AcquisitionComments", "AdmittingDiagnosesDescription")
SAFE_WORDS = frozenset("""
AI ABDOMEN ACQUISITION AND ANGIO AX AXIAL BODY BONE CHEST CONTRAST COR CORONAL COVID COVID-19 CT CTA DERIVED
DIAGNOSTIC DOSE EXPIRATION FOR HELICAL HIGH HRCT INSPIRATION IV KERNEL LDCT LESION LOCALIZER LOW LUNG LUNGS
MEDIASTINAL MEDIASTINUM MINIP MIP MPR NO NON NOT OF ORIGINAL PELVIS PLAIN PNEUMONIA PRIMARY PULMONARY RECON
RECONSTRUCTION REPORT RESOLUTION RESULT ROUTINE SAG SAGITTAL SCOUT SECONDARY SEG SEGMENTATION SHARP SLICE SLICES
SMOOTH SOFT SPIRAL SR STANDARD STRUCTURED SYNTHETIC THICK THIN THORAX TISSUE TOPOGRAM USE W WINDOW WITH WITHOUT WO
""".split())
_NUMERIC_WORD = re.compile(r"^\d+([.,]\d+)?(MM|CM|KV|MAS|S)?$")
_KERNEL_WORD = re.compile(r"^[A-Z]{1,2}\d{2}[A-Z]?$")      # B70f, I50f, FC13: reconstruction kernels
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,-]*|[^A-Za-z0-9]+")

# Private elements kept (creator, group, element offset): technical acquisition values
# from the safe-private lists used by research archives; every other private tag goes.
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset({
    ("GEMS_PARM_01", 0x0043, 0x27),   # scan pitch ratio
    ("GEMS_ACQU_01", 0x0019, 0x23),   # table speed
})

_DUMMY_DATES = frozenset({"00010101", "00010101010101.000000+0000", "000000.00"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"   # SC image storage classes (.7, .7.1-.7.4)


class BurnedInAnnotationRefused(Exception):
    """The instance may show patient data in its pixels; we do not clean pixels, so it is
    not exported (PS3.15 E.3.1 would need the Clean Pixel Data option)."""


def load_or_create_secret(path: Path) -> bytes:
    """The site's de-identification secret (32 random bytes, file mode 0600).

    It makes pseudonyms, UIDs and date shifts reproducible at this site and unguessable
    elsewhere: whoever has it can re-link an export to the node's studies, so it never
    leaves ``data_dir``.
    """
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        data = path.read_bytes()
        if len(data) < 32:
            raise ValueError(f"{path}: the de-identification secret is shorter than 32 bytes")
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return data


def _is_secondary_capture(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX)


def check_burned_in(ds: Dataset) -> None:
    """Raise :class:`BurnedInAnnotationRefused` for an instance that may carry text in its pixels."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise BurnedInAnnotationRefused("BurnedInAnnotation is YES")
    if _is_secondary_capture(ds):
        raise BurnedInAnnotationRefused("secondary capture (may have burned-in text)")


def _profile_rules() -> dict[tuple[int, ...], Callable[[Dataset, tuple[int, int]], None]]:
    """Table E.1-1 with the claimed options applied as per-tag overrides."""
    rules: dict[tuple[int, ...], Callable[[Dataset, tuple[int, int]], None]] = sda.initialize_actions(PROFILE_TABLE)
    keep = sda.keep
    for tag, action in list(rules.items()):
        if len(tag) != 2:
            continue
        try:
            vr = dictionary_VR(Tag(tag[0], tag[1]))
        except KeyError:
            continue
        # UIDs: remapped with the site secret before the table runs; dates: shifted (Modified
        # Dates option); sequences of UID references (X/Z/U*): their UIDs are remapped, so
        # the sequence is kept (the U choice), and the table runs inside each item.
        # The patient's own dates (birth, death: group 0010) are not longitudinal study
        # information: the basic action applies to them.
        if tag[0] == 0x0010 and vr in ("DA", "DT", "TM"):
            continue
        if vr in ("UI", "DA", "DT", "TM") or action is sda.delete_or_empty_or_replace_UID:
            rules[tag] = keep
    for keyword in (*PATIENT_CHARACTERISTICS, *DESCRIPTORS, "PatientName", "PatientID"):
        t = Tag(keyword)
        rules[(t.group, t.element)] = keep
    return rules


class Deidentifier:
    """Applies the profile to one instance at a time; deterministic for a given secret."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self._rules = _profile_rules()
        # The node's own SR: its Content Sequence holds the coded result and the algorithm's
        # identification, written by the node with no patient data, so it is kept (its UIDs
        # and dates are still remapped and shifted, person names emptied).
        content = Tag("ContentSequence")
        self._own_rules = {**self._rules, (content.group, content.element): sda.keep}
        self._uids: dict[str, str] = {}

    # ---- keyed, reproducible replacements ------------------------------------------------

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """A UID in the 2.25 (UUID-derived) form; the same for the same input and secret."""
        if not uid or uid.startswith(DICOM_ROOT):
            return uid
        got = self._uids.get(uid)
        if got is None:
            got = self._uids[uid] = "2.25." + str(int.from_bytes(self._mac("uid", uid)[:16], "big"))
        return got

    def pseudonym(self, patient_key: str) -> str:
        return "AEN" + self._mac("patient", patient_key).hex()[:13].upper()

    def date_shift_days(self, patient_key: str) -> int:
        """Days every date of this patient moves back: 30..1854, the same for all their studies,
        so intervals between studies survive (Modified Dates option)."""
        return 30 + int.from_bytes(self._mac("date", patient_key)[:4], "big") % 1825

    # ---- the profile ---------------------------------------------------------------------

    def deidentify(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (and return it); refuses burned-in annotation."""
        check_burned_in(ds)
        own = is_node_output(ds)
        key = str(ds.get("PatientID", "") or "") or str(ds.get("StudyInstanceUID", ""))
        shift = dt.timedelta(days=self.date_shift_days(key))
        pseudonym = self.pseudonym(key)
        self._prepass(ds, shift)
        self._apply_table(ds, own_content=own)
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        self._clean_descriptors(ds)
        self._zero_length_dummies(ds)
        if hasattr(ds, "file_meta") and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD_TEXT
        ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in METHOD_CODES])
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        return ds

    def _prepass(self, ds: Dataset, shift: dt.timedelta) -> None:
        """UIDs remapped, dates shifted, person names emptied -- at every nesting level."""

        def visit(d: Dataset, elem: DataElement) -> None:
            if elem.VR == "UI" and elem.value:
                elem.value = ([self.uid(str(v)) for v in elem.value] if elem.VM > 1 else self.uid(str(elem.value)))
            elif elem.VR in ("DA", "DT") and elem.value:
                values = list(elem.value) if elem.VM > 1 else [elem.value]
                shifted = [_shift(str(v), shift) for v in values]
                elem.value = shifted if elem.VM > 1 else shifted[0]
            elif elem.VR == "PN" and elem.tag != Tag("PatientName"):
                elem.value = ""

        ds.walk(visit)

    @staticmethod
    def _zero_length_dummies(ds: Dataset) -> None:
        """The library's Z/D for dates writes 0001-01-01 placeholders that validators reject
        as dates; Z means zero length, which is what they get here."""

        def visit(d: Dataset, elem: DataElement) -> None:
            if elem.VR in ("DA", "DT", "TM") and str(elem.value) in _DUMMY_DATES:
                elem.value = ""

        ds.walk(visit)

    def _apply_table(self, ds: Dataset, *, own_content: bool) -> None:
        """The library's table on this level, then on every sequence item below it."""
        rules = _present(self._own_rules if own_content else self._rules, ds)
        sda.anonymize_dataset(ds, delete_private_tags=False, base_rules_gen=lambda: rules)
        _strip_private(ds)
        for elem in list(ds):
            if elem.VR != "SQ" or elem.value is None:
                continue
            if own_content and elem.tag == Tag("ContentSequence"):
                continue  # the node's own SR content: coded results, no patient data (UIDs/dates done)
            for item in elem.value:
                self._apply_table(item, own_content=own_content)

    def _clean_descriptors(self, ds: Dataset) -> None:
        def visit(d: Dataset, elem: DataElement) -> None:
            if elem.keyword in DESCRIPTORS and elem.value:
                cleaned = clean_descriptor(str(elem.value))
                if cleaned:
                    elem.value = cleaned
                else:
                    del d[elem.tag]

        ds.walk(visit)


def _present(rules: dict[tuple[int, ...], Callable[[Dataset, tuple[int, int]], None]], ds: Dataset
             ) -> dict[tuple[int, ...], Callable[[Dataset, tuple[int, int]], None]]:
    """The rules for the attributes this level of ``ds`` (and its file meta) has.

    The library looks up each of the table's ~650 tags on every dataset; filtering first
    does the same work for the few dozen present (3-4x faster per instance)."""
    tags = [int(t) for t in ds.keys()]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        tags += [int(t) for t in meta.keys()]
    present = {(t >> 16, t & 0xFFFF) for t in tags}
    out: dict[tuple[int, ...], Callable[[Dataset, tuple[int, int]], None]] = {}
    for key, action in rules.items():
        if len(key) == 2:
            if key in present:
                out[key] = action
        elif any((g & key[2]) == (key[0] & key[2]) and (e & key[3]) == (key[1] & key[3]) for g, e in present):
            out[key] = action
    return out


def clean_descriptor(text: str) -> str:
    """Keep only safe-vocabulary words, numbers with units and kernel codes."""
    words = []
    for token in re.findall(r"[A-Za-z0-9][A-Za-z0-9.,-]*", text):
        up = token.upper().rstrip(".,-")
        if up in SAFE_WORDS or _NUMERIC_WORD.match(up) or _KERNEL_WORD.match(up):
            words.append(token.rstrip(".,-"))
    return " ".join(words)[:64]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _shift(value: str, shift: dt.timedelta) -> str:
    """YYYYMMDD[rest] moved ``shift`` earlier; anything unparseable becomes empty (removed)."""
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (day - shift).strftime("%Y%m%d") + value[8:]


def _strip_private(ds: Dataset) -> None:
    """Remove every private element of this level except :data:`SAFE_PRIVATE` (and its creator)."""
    keep: set[BaseTag] = set()
    for creator, group, offset in SAFE_PRIVATE:
        try:
            block = ds.private_block(group, creator)
        except KeyError:
            continue
        tag = block.get_tag(offset)
        if tag in ds:
            keep.add(tag)
            keep.add(Tag(group, block.block_start >> 8))
    for elem in list(ds):
        if elem.tag.is_private and elem.tag not in keep:
            del ds[elem.tag]
