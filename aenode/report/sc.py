"""Secondary capture with highdicom: one RGB image per result.

Layout: a burned-in banner on top (category, probability, model name and version, lung
involvement when known, "NOT FOR DIAGNOSTIC USE") above a 2-column mosaic of up to
:data:`KEY_SLICES` key axial slices in lung window (W 1500 / L -600) with the lesion map
as a semi-transparent overlay.  Key slices: those with the most lesion voxels, spread
apart; for a negative study (no lesion) evenly spaced representative slices through the
middle of the series.  Source Image Sequence names the slices shown, top-left first.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from aenode import __version__
from aenode.report.banner import (
    BANNER_FG,
    WARNING_FG,
    mosaic,
    overlay,
    render_banner,
    window_to_uint8,
)
from aenode.report.models import ReportInput
from aenode.report.uids import ResultUIDs, result_uids
from aenode.store.marks import NODE_MANUFACTURER, OUTPUT_DESCRIPTION_PREFIX, SOFTWARE_PREFIX

SC_SERIES_NUMBER = 9901
SC_SERIES_DESCRIPTION = f"{OUTPUT_DESCRIPTION_PREFIX} - KEY IMAGES"
KEY_SLICES = 4
MIN_TILE = 256  # smaller slices are enlarged (nearest neighbour) so the banner is legible


def key_slices(lesion_map: np.ndarray | None, n_slices: int, count: int = KEY_SLICES) -> list[int]:
    """Indices (ascending) of the slices to show."""
    per_slice = None if lesion_map is None else lesion_map.reshape(lesion_map.shape[0], -1).astype(bool).sum(axis=1)
    return choose_key_slices(per_slice, n_slices, count)


def choose_key_slices(per_slice: np.ndarray | None, n_slices: int, count: int = KEY_SLICES) -> list[int]:
    """Key slices from a lesion score per slice: the most affected, spread apart; else
    representative slices of the middle of the series."""
    count = max(1, min(count, n_slices))
    if per_slice is not None:
        if per_slice.max() > 0:
            min_gap = max(1, n_slices // (count * 3))
            chosen: list[int] = []
            for z in np.argsort(-per_slice, kind="stable"):
                if per_slice[z] == 0 or len(chosen) == count:
                    break
                if all(abs(int(z) - c) >= min_gap for c in chosen):
                    chosen.append(int(z))
            for z in np.argsort(-per_slice, kind="stable"):  # too few spread apart: fill up
                if len(chosen) == count or per_slice[z] == 0:
                    break
                if int(z) not in chosen:
                    chosen.append(int(z))
            return sorted(chosen)
    # Representative slices: spread over the middle 30-75 % of the series.
    if count == 1:
        return [n_slices // 2]
    fractions = np.linspace(0.30, 0.75, count)
    return sorted({min(n_slices - 1, int(round(f * (n_slices - 1)))) for f in fractions})


OUT_OF_DOMAIN_BANNER = "Outside the validated domain - no AI category"


def banner_lines(inp: ReportInput) -> list[tuple[str, tuple[int, int, int]]]:
    if inp.category is None:
        lines = [("AI RESULT - NOT FOR DIAGNOSTIC USE", WARNING_FG), (OUT_OF_DOMAIN_BANNER, WARNING_FG)]
        lines += [(part.strip(), BANNER_FG) for part in (inp.out_of_domain or "").split(";") if part.strip()]
        lines.append((f"Model: {inp.model.name} {inp.model.version}", BANNER_FG))
        return lines
    cat = inp.category_concept
    lines = [
        ("AI RESULT - NOT FOR DIAGNOSTIC USE", WARNING_FG),
        (f"Category: {cat.meaning} (p = {inp.category_probability:.2f})", BANNER_FG),
    ]
    if inp.lung_involvement_percent is not None:
        lines.append((f"Lung involvement: {inp.lung_involvement_percent:.1f} %", BANNER_FG))
    lines.append((f"Model: {inp.model.name} {inp.model.version}", BANNER_FG))
    return lines


def render_pixels(inp: ReportInput, slices: list[int]) -> np.ndarray:
    vol = inp.volume
    assert vol is not None
    tiles = []
    for z in slices:
        mask: np.ndarray | None = None
        if inp.overlay is not None:
            mask = inp.overlay[z]
        elif inp.lesion_map is not None:
            mask = inp.lesion_map[z]
        tiles.append(overlay(window_to_uint8(vol[z]), mask))
    h, w, _ = tiles[0].shape
    factor = max(1, -(-MIN_TILE // min(h, w)))
    if factor > 1:
        tiles = [t.repeat(factor, axis=0).repeat(factor, axis=1) for t in tiles]
    grid = mosaic(tiles, columns=2)
    banner = render_banner(banner_lines(inp), grid.shape[1])
    return np.ascontiguousarray(np.concatenate([banner, grid], axis=0))


def build_sc(inp: ReportInput, *, uids: ResultUIDs | None = None) -> hd.sc.SCImage:
    """The secondary capture of ``inp`` (which must carry a volume)."""
    if not isinstance(inp, ReportInput):
        raise TypeError("inp: must be a ReportInput")
    if inp.volume is None:
        raise ValueError("inp.volume: the secondary capture needs the HU volume")
    uids = uids or result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, inp.revision)
    slices = sorted(inp.overlay) if inp.overlay is not None else key_slices(inp.lesion_map, inp.volume.shape[0])
    pixels = render_pixels(inp, slices)
    h = inp.header
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=inp.study_instance_uid,
        series_instance_uid=uids.sc_series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_sop_instance_uid,
        instance_number=inp.revision,
        manufacturer=NODE_MANUFACTURER,
        patient_id=h.get("PatientID"),
        patient_name=h.get("PatientName"),
        patient_birth_date=h.get("PatientBirthDate"),
        patient_sex=h.get("PatientSex") or None,
        accession_number=h.get("AccessionNumber"),
        study_id=h.get("StudyID"),
        study_date=h.get("StudyDate"),
        study_time=h.get("StudyTime"),
        referring_physician_name=h.get("ReferringPhysicianName"),
        patient_orientation=("L", "P"),
        series_description=SC_SERIES_DESCRIPTION,
    )
    # Everything else of the patient/study modules (character set, issuer, description...).
    for elem in h:
        if elem.keyword and elem.keyword not in sc and elem.keyword != "StudyInstanceUID":
            sc[elem.tag] = elem
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = ""  # Type 2C: lungs are paired, the image shows both (empty = not one side)
    sc.SoftwareVersions = f"{SOFTWARE_PREFIX} {__version__}"
    sc.ManufacturerModelName = "aenode"
    what = ("outside the validated domain, no AI category" if inp.category is None else "AI lesion overlay")
    sc.DerivationDescription = (
        f"Key axial slices, lung window W1500 L-600, {what}; {inp.model.name} {inp.model.version}")[:1024]
    sources = []
    for z in slices:
        ref = inp.source_refs[z]
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        sources.append(item)
    sc.SourceImageSequence = sources
    return sc
