"""Model packages: manifest validation, sha256 check, providers, several models side by side."""

from __future__ import annotations

import io
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from aenode.infer.engine import Model
from aenode.infer.manifest import ManifestError, load_manifest, parse_manifest
from aenode.infer.registry import ModelRegistry
from aenode.load.volume import Volume
from aenode.logs import configure_logging

MODELS = Path(__file__).resolve().parents[2] / "models"
COVID = MODELS / "covid-typicality"
INVOLVEMENT = MODELS / "lung-involvement"


def manifest_dict(pkg: Path = COVID) -> dict:
    return tomllib.loads((pkg / "model.toml").read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        parse_manifest(data, "model.toml")
    return exc.value.problems


def test_shipped_manifests_are_valid():
    for pkg in (COVID, INVOLVEMENT):
        m = load_manifest(pkg)
        assert m.outputs.lesion_map is not None
        assert all(c.scheme_designator == "99AENODE" for c in m.outputs.classes)
        assert m.coding_scheme[0].designator == "99AENODE"
    covid = load_manifest(COVID)
    assert [c.name for c in covid.outputs.classes if c.alert] == ["typical", "indeterminate"]


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda d: d["input"].pop("name"), "input.name: Field required"),
        (lambda d: d["preprocessing"].update(hu_window=[200.0, -1000.0]), "preprocessing.hu_window: low must be below high"),
        (lambda d: d["preprocessing"].pop("spacing_mm"), "preprocessing.spacing_mm: required"),
        (lambda d: d["selection"].update(slice_thickness_mm=[3.0, 1.0]), "selection.slice_thickness_mm: minimum above maximum"),
        (lambda d: d["selection"].update(colour="red"), "selection.colour: unknown key"),
        (lambda d: d.update(sha256="abc"), "sha256: String should match pattern"),
        (lambda d: d["outputs"]["classes"][0].update(scheme_designator="99OTHER"),
         "outputs.classes[0].scheme_designator: '99OTHER' is not declared"),
        (lambda d: d["input"].update(shape=["batch", 1, 64, 128]), "input.shape"),
        (lambda d: d["outputs"]["classes"][1].pop("code_value"), "outputs.classes[1].code_value: Field required"),
    ],
)
def test_manifest_errors_name_the_key(edit, expect):
    d = manifest_dict()
    edit(d)
    found = problems(d)
    assert any(p.startswith(expect) for p in found), found


def test_sha256_mismatch_refused(tmp_path):
    pkg = tmp_path / "covid-typicality"
    shutil.copytree(COVID, pkg)
    data = bytearray((pkg / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (pkg / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"sha256: model.onnx has sha256 [0-9a-f]{64}, the manifest says .*refusing"):
        Model(pkg)
    reg = ModelRegistry.load(tmp_path)
    assert len(reg) == 0 and "sha256" in reg.failed["covid-typicality"]


def test_missing_cuda_falls_back_to_cpu_with_warning():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    try:
        m = Model(COVID, providers=["cuda", "cpu"], device_id=0)
    finally:
        configure_logging("INFO")
    assert m.providers == ["CPUExecutionProvider"]
    log = stream.getvalue()
    assert "execution_provider_unavailable" in log and '"provider": "cuda"' in log


def _volume(rng) -> Volume:
    """A crude chest: air outside, soft-tissue body, two lung-density ellipsoids."""
    z, y, x = np.mgrid[0:120, 0:128, 0:128].astype(np.float32)
    hu = np.full(z.shape, -1000, np.int16)
    body = ((x - 64) / 55) ** 2 + ((y - 64) / 40) ** 2 < 1
    hu[body] = 40
    for cx in (40, 88):
        lung = ((x - cx) / 18) ** 2 + ((y - 60) / 26) ** 2 + ((z - 60) / 50) ** 2 < 1
        hu[lung] = -850
    hu += rng.normal(0, 20, hu.shape).astype(np.int16)
    return Volume(hu=hu, spacing_zyx=(2.5, 2.6, 2.6), origin=(-166.0, -166.0, -150.0), direction=np.eye(3),
                  sop_instance_uids=[None] * 120, paths=[""] * 120)


def test_two_models_side_by_side():
    reg = ModelRegistry.load(MODELS)
    assert {m.name for m in reg} >= {"covid-typicality", "lung-involvement"}
    vol = _volume(np.random.default_rng(0))
    preds = {m.name: m.predict(vol) for m in reg}
    covid, inv = preds["covid-typicality"], preds["lung-involvement"]
    assert set(covid.probabilities) == {"typical", "indeterminate", "atypical", "negative"}
    assert set(inv.probabilities) == {"none", "minimal", "mild", "moderate", "severe"}
    for p in preds.values():
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert p.involvement_percent is not None and 0 <= p.involvement_percent <= 100
        assert p.lesion_prob is not None and p.lesion_prob.shape == (64, 128, 128)
    mask = covid.lesion_mask_on_series(vol)
    assert mask.shape == vol.shape and mask.dtype == np.uint8


def test_enabled_models_from_config():
    reg = ModelRegistry.load(MODELS, enabled=["lung-involvement", "nope"])
    assert [m.name for m in reg] == ["lung-involvement"]
    assert "nope" in reg.failed


def test_sessions_are_warmed_up_and_logged():
    """One dummy run per model at start, logged with its time (the first study must not
    pay the provider's start-up)."""
    import io

    from aenode.infer.registry import ModelRegistry
    from aenode.logs import configure_logging

    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    try:
        registry = ModelRegistry.load(COVID.parent, providers=["cpu"])
        registry.warm_up()
    finally:
        configure_logging("INFO")
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    warmed = {e["model"]: e["seconds"] for e in events if e["event"] == "model_warmed_up"}
    assert set(warmed) == {m.name for m in registry} and len(warmed) >= 2
    assert all(isinstance(v, float) and v >= 0 for v in warmed.values())
    # Nothing of ONNX Runtime's own output escaped the JSON log on stderr.
    assert all(line.startswith("{") for line in stream.getvalue().splitlines() if line.strip())
