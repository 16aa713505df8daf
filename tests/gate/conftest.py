"""Shared fixtures of the domain-gate / SEG / calibration tests (issue 12).

Phantom seeds 900100+ (the tests' range 900000+; training uses 0-199, the model card's
evaluation 100000+, calibration 300000+)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "models" / "covid-typicality"


@pytest.fixture(scope="session")
def typical_study(tmp_path_factory) -> Path:
    from aenode.phantom import generate_study

    d = tmp_path_factory.mktemp("typical") / "study"
    generate_study(d, "typical", seed=900_101, slice_thickness=2.5, slices=128, extra_series=False)
    return d


def soft_tissue_copy(src: Path, dst: Path, shift_hu: int = 700) -> Path:
    """A copy of a phantom study whose stored values are raised by ``shift_hu`` (lungs read
    as soft tissue: a miscalibrated scanner, a contrast bolus gone wrong, not a chest CT),
    with new study/series/instance UIDs so it is a study of its own."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    for f in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        if ds.Modality != "CT":
            continue
        arr = ds.pixel_array.astype(np.int32) + int(round(shift_hu / float(ds.RescaleSlope)))
        info = np.iinfo(ds.pixel_array.dtype)
        ds.PixelData = np.clip(arr, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
    shutil.copytree(src / "ground_truth", dst / "ground_truth", dirs_exist_ok=True)
    return dst


@pytest.fixture(scope="session")
def soft_tissue_study(typical_study, tmp_path_factory) -> Path:
    return soft_tissue_copy(typical_study, tmp_path_factory.mktemp("ood") / "study")


@pytest.fixture(scope="session")
def covid_model():
    from aenode.infer.engine import Model

    return Model(PACKAGE, providers=["cpu"])


def dciodvfy_errors(path: Path) -> list[str]:
    import subprocess

    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(autouse=True)
def _logging_to_real_stderr():
    """``aenode.cli.main`` points logging at the (captured) stderr of the moment; put it back
    so that later tests do not log into a closed capture."""
    yield
    import sys

    from aenode.logs import configure_logging

    configure_logging("INFO", stream=sys.__stderr__)
