"""Build a :class:`ReportInput` from what the inference stage produces.

``report_input_from_outcome(manifest, prediction, volume, series_uid, revision)`` takes the
model manifest, the prediction and the loaded volume of the analysed series.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom import dcmread

from aenode.infer.engine import Prediction
from aenode.infer.manifest import Manifest
from aenode.load.volume import Volume
from aenode.report.models import (
    ClassConcept,
    CodingScheme,
    ModelInfo,
    PredecessorRef,
    ReportInput,
    SegmentationInput,
    SourceRef,
    header_from_dataset,
)
from aenode.report.sc import choose_key_slices


def report_input_from_outcome(manifest: Manifest, prediction: Prediction, volume: Volume, series_uid: str,
                              revision: int,
                              *, sop_class_uid: str | None = None,
                              predecessors: list[PredecessorRef] | None = None,
                              images: bool = True) -> ReportInput:
    """``images=False``: no SC overlay and no SEG source (the SR's own pass, which must not
    wait for the lesion map's projection onto the series)."""
    # Slices that came from an instance (a gap filled by the loader has no UID).
    keep = [z for z, uid in enumerate(volume.sop_instance_uids) if uid]
    if not keep:
        raise ValueError("volume: no slice has a SOP instance UID")
    first = dcmread(volume.paths[keep[0]], stop_before_pixels=True)
    header = header_from_dataset(first)
    cls_uid = sop_class_uid or str(first.SOPClassUID)
    refs = [SourceRef(cls_uid, str(volume.sop_instance_uids[z])) for z in keep]
    hu = volume.hu if len(keep) == volume.hu.shape[0] else volume.hu[keep]
    overlay = None
    segmentation_source: Callable[[], SegmentationInput | None] | None = None
    spec = manifest.outputs.lesion_map
    threshold = spec.threshold if spec else 0.5
    outside = prediction.category is None
    # Outside the validated domain the lesion map is no more trustworthy than the category:
    # no overlay, no SEG, no involvement.
    scores = None if outside or not images else prediction.lesion_scores_on_series(volume, threshold=threshold)
    if scores is not None:
        # Only the slices the SC shows are resampled to full resolution (issue 11: the
        # full 512 x 512 x N projection was the slowest step of the results stage).
        scores = scores[keep]
        shown = choose_key_slices(scores, len(keep))
        masks = prediction.lesion_masks_on_slices(volume, [keep[z] for z in shown], threshold=threshold) or {}
        overlay = {z: masks[keep[z]] for z in shown}
    # A tilted series was resampled onto another grid than its instances': a SEG that
    # references those instances would be misplaced, so none is written for it.
    if images and manifest.outputs.seg and not outside and prediction.lesion_prob is not None and \
            not any("gantry tilt" in w for w in volume.warnings):
        # Computed when the SEG is written, after the SR and SC are on their way (the full
        # masks take seconds; the SR must not wait for them).
        def segmentation_source() -> SegmentationInput | None:
            return _segmentation(manifest, prediction, volume, keep, threshold)
    classes = [ClassConcept(c.name, c.code_value, c.scheme_designator, c.meaning) for c in manifest.outputs.classes]
    schemes = [CodingScheme(s.designator, s.name, s.version, s.responsible_organization, s.uid)
               for s in manifest.coding_scheme]
    return ReportInput(
        header=header,
        series_instance_uid=series_uid,
        source_refs=refs,
        classes=classes,
        probabilities=[float(prediction.probabilities[c.name]) for c in classes],
        category=prediction.category,
        model=ModelInfo(manifest.name, manifest.version, manifest.algorithm.manufacturer, manifest.sha256),
        coding_schemes=schemes,
        lung_involvement_percent=None if outside else prediction.involvement_percent,
        revision=revision,
        predecessors=predecessors,
        volume=np.asarray(hu, dtype=np.int16),
        overlay=overlay,
        out_of_domain=prediction.domain.reason if outside and prediction.domain is not None else (
            "outside the validated domain" if outside else None),
        domain_values={c.name: c.value for c in prediction.domain.checks if c.value is not None}
        if prediction.domain is not None else {},
        segmentation_source=segmentation_source,
    )


def _segmentation(manifest: Manifest, prediction: Prediction, volume: Volume, keep: list[int],
                  threshold: float) -> SegmentationInput | None:
    """The full-resolution lesion and lung masks (computed here, once, only when the
    manifest asks for a SEG) and the analysed instances' headers, without pixels."""
    lesion = prediction.lesion_mask_on_series(volume, threshold=threshold)
    if lesion is None:
        return None
    lung_spec = manifest.outputs.lung_map
    lung = prediction.lung_mask_on_series(volume, threshold=lung_spec.threshold if lung_spec else 0.5)
    if len(keep) != lesion.shape[0]:
        lesion = lesion[keep]
        lung = None if lung is None else lung[keep]
    if lung is not None:
        np.bitwise_or(lung, lesion, out=lung)  # consolidated lung is lung too
    headers = [dcmread(volume.paths[z], stop_before_pixels=True) for z in keep]
    return SegmentationInput(headers, lesion, lung)
