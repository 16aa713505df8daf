"""The lesion map as a DICOM Segmentation (highdicom, BINARY), second wave of issue 12.

Two coded segments on the analysed series' grid: the model's lesion map (SCT 52988006
"Lesion", category "Morphologically abnormal structure", anatomic region Lung) and the
rest of its lung map (SCT 39607008 "Lung", category "Anatomical structure").  The
segments do not overlap (the lungs are segment 1 + segment 2), which keeps the build
to a few bytes per voxel.  The source images are
the analysed series' instances, so a viewer overlays the SEG on the very slices the
model saw; same study, new series carrying the node's output marks (so the node never
analyses it again when PACS routes it back), deterministic UIDs (:mod:`aenode.report.uids`).
Frames with no segment pixels are left out (highdicom ``omit_empty_frames``).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from aenode import __version__
from aenode.report.models import ReportInput
from aenode.report.uids import ResultUIDs, result_uids
from aenode.store.marks import NODE_MANUFACTURER, OUTPUT_DESCRIPTION_PREFIX, SOFTWARE_PREFIX

SEG_SERIES_NUMBER = 9902
SEG_SERIES_DESCRIPTION = f"{OUTPUT_DESCRIPTION_PREFIX} - SEG"
LESION = Code("52988006", "SCT", "Lesion")
LUNG = Code("39607008", "SCT", "Lung")
ABNORMAL = Code("49755003", "SCT", "Morphologically abnormal structure")
ANATOMY = Code("123037004", "SCT", "Anatomical structure")


def build_seg(inp: ReportInput, *, node_name: str = "aenode", uids: ResultUIDs | None = None) -> hd.seg.Segmentation:
    """The Segmentation of ``inp`` (which must carry ``segmentation``)."""
    if not isinstance(inp, ReportInput):
        raise TypeError("inp: must be a ReportInput")
    seg_in = inp.segmentation
    if seg_in is None:
        raise ValueError("inp.segmentation: the SEG needs the masks and the source image headers")
    uids = uids or result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, inp.revision)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=inp.model.name[:64], family=codes.cid7162.ArtificialIntelligence, version=inp.model.version[:64])
    descriptions = [hd.seg.SegmentDescription(
        segment_number=1, segment_label="Lesion (AI)", segmented_property_category=ABNORMAL,
        segmented_property_type=LESION, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=uids.seg_lesion_tracking_uid,
        tracking_id=f"{inp.model.name} lesion map"[:64],
        anatomic_regions=[LUNG])]
    if seg_in.lung is not None:
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=2, segment_label="Lung outside the lesion (AI)", segmented_property_category=ANATOMY,
            segmented_property_type=LUNG, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=uids.seg_lung_tracking_uid,
            tracking_id=f"{inp.model.name} lung map"[:64]))
    # One label map, one byte per voxel (1 lesion, 2 the rest of the lung): the segments do
    # not overlap, so highdicom never builds its 8-bytes-per-voxel overlap check of a 4D
    # stack (measured: 842 MiB peak for 256 x 512 x 512 with two overlapping segments).
    pixels = np.zeros(seg_in.lesion.shape, dtype=np.uint8)
    if seg_in.lung is not None:
        np.putmask(pixels, seg_in.lung, np.uint8(2))
    np.putmask(pixels, seg_in.lesion, np.uint8(1))
    seg = hd.seg.Segmentation(
        source_images=list(seg_in.source_images),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series_instance_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.seg_sop_instance_uid,
        instance_number=inp.revision,
        manufacturer=NODE_MANUFACTURER,
        manufacturer_model_name="aenode",
        software_versions=f"{SOFTWARE_PREFIX} {__version__}",
        device_serial_number=node_name[:64] or "aenode",
        series_description=SEG_SERIES_DESCRIPTION,
        omit_empty_frames=bool(pixels.any()),  # an all-empty map still gets its frames
    )
    # The rest of the patient/study modules (character set, issuer, description...).
    for elem in inp.header:
        if elem.keyword and elem.keyword not in seg and elem.keyword != "StudyInstanceUID":
            seg[elem.tag] = elem
    return seg
