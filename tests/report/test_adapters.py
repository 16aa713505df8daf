"""ReportInput from the inference stage's objects, with the repository's real manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread

from aenode.report.adapters import report_input_from_outcome
from aenode.report.publish import write_dataset
from aenode.report.sc import build_sc
from aenode.report.sr import build_sr
from tests.report.test_report import dciodvfy_errors, dsrdump

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "models" / "covid-typicality"


@dataclass
class FakeVolume:
    hu: np.ndarray
    sop_instance_uids: list
    paths: list
    warnings: list = field(default_factory=list)


@dataclass
class FakePrediction:
    category: str
    probabilities: dict
    involvement_percent: float | None = None
    lesion_prob: object = None
    extra: dict = field(default_factory=dict)
    domain: object = None  # no domain gate result

    def lesion_scores_on_series(self, volume, threshold=0.5):
        return None  # this model has no lesion map

    def lesion_masks_on_slices(self, volume, slices, threshold=0.5):
        return None


def test_adapter_with_real_manifest_and_phantom(tmp_path):
    import aenode.infer.manifest as manifest_mod
    import aenode.phantom as phantom
    manifest = manifest_mod.load_manifest(MANIFEST_DIR)
    study = phantom.generate_study(tmp_path / "s", "negative", seed=2, slices=20, extra_series=False)
    files = sorted(study.ct_files, key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber))
    dss = [dcmread(p) for p in files]
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss]).astype(np.int16)
    uids = [str(d.SOPInstanceUID) for d in dss]
    uids[5] = None  # a gap the loader filled: dropped from refs and from the SC volume
    vol = FakeVolume(hu, uids, [str(p) for p in files])
    names = [c.name for c in manifest.outputs.classes]
    probs = {n: (0.91 if n == "negative" else 0.03) for n in names}
    inp = report_input_from_outcome(manifest, FakePrediction("negative", probs, 0.0), vol,
                                    str(dss[0].SeriesInstanceUID), revision=1)
    assert len(inp.source_refs) == 19 and inp.volume.shape[0] == 19
    assert inp.header.PatientID == dss[0].PatientID
    sr, sc = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    write_dataset(build_sr(inp), sr)
    write_dataset(build_sc(inp), sc)
    assert dciodvfy_errors(sr) == [] and dciodvfy_errors(sc) == []
    assert "Negative" in dsrdump(sr)
