"""The ONNX preprocessing graph (aenode.infer.prepgraph) against the SimpleITK reference
(aenode.infer.preprocess.preprocess), on CPU ONNX Runtime, with the real models on held-out
phantoms: in the scanner's own orientation, flipped and with the axes permuted (both paths
must give the same model input, since the patient is the same), and an oblique series,
which the graph cannot express and leaves to SimpleITK."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from aenode.infer.prepgraph import GraphPreprocessor, plan
from aenode.infer.preprocess import preprocess
from aenode.load.volume import Volume, load_series
from aenode.select.rules import select_series
from aenode.store.meta import read_meta

MAX_INPUT_DIFF = 2e-3      # normalised units: 2.6 HU of the 1300 HU window
MAX_PROB_DIFF = 0.01


def _variant(v: Volume, flip: tuple[int, ...] = (), perm: tuple[int, int, int] = (0, 1, 2)) -> Volume:
    """The same patient stored differently: array axes ``flip``-ped, then permuted."""
    hu, d, o, sp = v.hu, v.direction.copy(), np.asarray(v.origin, dtype=np.float64), list(v.spacing_zyx)
    for k in flip:
        o = o + d[:, 2 - k] * (hu.shape[k] - 1) * sp[k]
        d[:, 2 - k] = -d[:, 2 - k]
        hu = np.flip(hu, axis=k)
    nd = np.zeros((3, 3))
    for i in range(3):
        nd[:, 2 - i] = d[:, 2 - perm[i]]
    hu = np.ascontiguousarray(np.transpose(hu, perm))
    return Volume(hu=hu, spacing_zyx=tuple(sp[k] for k in perm), origin=tuple(float(x) for x in o),  # type: ignore[arg-type]
                  direction=nd, sop_instance_uids=[None] * hu.shape[0], paths=[""] * hu.shape[0])


def _volume(study, model) -> Volume:
    headers = [read_meta(f) for f in sorted(study.rglob("*.dcm")) if "ground_truth" not in f.parts]
    sel = select_series(headers, model.manifest.selection)
    assert sel.selected is not None
    return load_series(list(sel.selected.instances))


VARIANTS = {
    "as stored": {},
    "left-right flipped": {"flip": (2,)},
    "head first / feet first and AP flipped": {"flip": (0, 1)},
    "axes permuted (coronal-like), flipped": {"perm": (1, 0, 2), "flip": (0,)},
}


def _compare(heldout_studies, models, combos: list[tuple[str, str]]) -> None:
    """Per (pattern, variant): one reference input (SimpleITK, as stored), the graph's input
    for the variant, and both models (they share their preprocessing) on each."""
    ms = list(models)
    assert len({m.input_key() for m in ms}) == 1
    m0 = ms[0].manifest
    graph = GraphPreprocessor(m0.preprocessing, m0.input.size_zyx, ["CPUExecutionProvider"], m0.name)
    worst = worst_p = 0.0
    timings: dict[str, list[float]] = {"sitk": [], "graph": []}
    refs: dict[str, tuple[Volume, np.ndarray, object, dict]] = {}
    for pattern, name in combos:
        study = next(s for s in heldout_studies if s[0] == pattern)[2]
        if pattern not in refs:
            volume = _volume(study, ms[0])
            t0 = time.perf_counter()
            ref_x, ref_grid = preprocess(volume, m0.preprocessing, m0.input.size_zyx)
            timings["sitk"].append(time.perf_counter() - t0)
            refs[pattern] = (volume, ref_x, ref_grid, {m.name: m.predict(volume, (ref_x, ref_grid)) for m in ms})
        volume, ref_x, ref_grid, preds = refs[pattern]
        v = _variant(volume, **VARIANTS[name])
        t0 = time.perf_counter()
        got = graph.prepare(v)
        timings["graph"].append(time.perf_counter() - t0)
        assert got is not None, name
        x, grid = got
        assert grid == ref_grid, name
        assert x.shape == ref_x.shape and x.dtype == np.float32
        diff = float(np.abs(x - ref_x).max())
        worst = max(worst, diff)
        assert diff < MAX_INPUT_DIFF, f"{study.name} {name}: input differs by {diff}"
        for model in ms:
            ref, pred = preds[model.name], model.predict(v, (x, grid))
            assert pred.category == ref.category, f"{model.name} {study.name} {name}"
            for k, p in ref.probabilities.items():
                worst_p = max(worst_p, abs(pred.probabilities[k] - p))
                assert abs(pred.probabilities[k] - p) < MAX_PROB_DIFF, f"{model.name} {study.name} {name} {k}"
    print(f"graph vs SimpleITK ({len(combos)} cases): max |input difference| {worst:.2e}, max |probability "
          f"difference| {worst_p:.2e}; median time sitk {np.median(timings['sitk']):.3f} s, graph (CPU) "
          f"{np.median(timings['graph']):.3f} s")


def test_graph_matches_simpleitk_on_heldout_phantoms(heldout_studies, models):
    """Each pattern in one storage variant (every variant once)."""
    _compare(heldout_studies, models, list(zip(("typical", "indeterminate", "atypical", "negative"), VARIANTS)))


@pytest.mark.slow
def test_graph_matches_simpleitk_in_every_variant(heldout_studies, models):
    _compare(heldout_studies, models, [(p, v) for p in ("typical", "indeterminate", "atypical", "negative")
                                       for v in VARIANTS])


def test_oblique_series_falls_back_to_simpleitk(heldout_studies, models):
    model = models.get("covid-typicality")
    volume = _volume(next(s for s in heldout_studies if s[0] == "typical")[2], model)
    t = math.radians(12.0)   # a tilted gantry leaves the column vector oblique
    rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    oblique = Volume(hu=volume.hu, spacing_zyx=volume.spacing_zyx, origin=volume.origin,
                     direction=rot @ volume.direction, sop_instance_uids=volume.sop_instance_uids,
                     paths=volume.paths)
    m = model.manifest
    assert plan(oblique, m.preprocessing, m.input.size_zyx) is None
    x, _ = model.prepare(oblique)
    assert model.last_prepare_method == "sitk"
    ref_x, _ = preprocess(oblique, m.preprocessing, m.input.size_zyx)
    assert np.array_equal(x, ref_x)
    model.prepare(volume)
    assert model.last_prepare_method == "graph-cpu"


def test_a_failing_graph_falls_back_to_simpleitk_loudly(heldout_studies, models, monkeypatch, capfd):
    model = models.get("covid-typicality")
    volume = _volume(next(s for s in heldout_studies if s[0] == "negative")[2], model)
    assert model.graph is not None

    def broken(_volume: Volume) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(model.graph, "prepare", broken)
    x, _ = model.prepare(volume)
    assert model.last_prepare_method == "sitk"
    m = model.manifest
    assert np.array_equal(x, preprocess(volume, m.preprocessing, m.input.size_zyx)[0])
    out = capfd.readouterr()
    assert "preprocess_graph_failed" in out.out + out.err


@pytest.mark.parametrize("n", [4, 37])
def test_gaussian_operator_is_simpleitks(n):
    """The Gaussian matrix reproduces SimpleITK's recursive Gaussian on a 1-D profile."""
    import SimpleITK as sitk

    from aenode.infer.prepgraph import _gaussian_matrix

    rng = np.random.default_rng(n)
    profile = rng.normal(size=n).astype(np.float32) * 100
    img = sitk.GetImageFromArray(np.tile(profile, (4, 4, 1)))
    img.SetSpacing((1.4, 1.0, 1.0))
    g = sitk.SmoothingRecursiveGaussianImageFilter()
    g.SetSigma([1.2, 1e-3, 1e-3])
    ref = sitk.GetArrayFromImage(g.Execute(img))[0, 0]
    got = _gaussian_matrix(n, 1.4, 1.2) @ profile
    assert np.abs(got - ref).max() < 1e-3 * np.abs(profile).max()


@pytest.mark.parametrize("extra", [
    {"mode": "fit", "normalisation": "zscore", "mean": -500.0, "std": 400.0},
    {"mode": "spacing", "spacing_mm": [2.0, 2.5, 2.5], "antialias": False, "pad_hu": -2000.0},
])
def test_graph_matches_simpleitk_for_other_manifest_settings(extra):
    """The manifest's other preprocessing choices (fit to the input size, z-score, no
    anti-aliasing, another pad value), on a small synthetic series with a flipped axis
    that does not fill the model grid (so the padding shows)."""
    from aenode.infer.manifest import Preprocessing

    prep = Preprocessing.model_validate({"hu_window": [-1000.0, 400.0], **extra})
    rng = np.random.default_rng(7)
    hu = rng.integers(-1000, 400, size=(40, 48, 56), dtype=np.int16)
    direction = np.diag([-1.0, 1.0, 1.0])
    volume = Volume(hu=hu, spacing_zyx=(1.25, 0.8, 0.9), origin=(30.0, -20.0, 100.0), direction=direction,
                    sop_instance_uids=[None] * 40, paths=[""] * 40)
    size = (24, 32, 32)
    ref_x, ref_grid = preprocess(volume, prep, size)
    got = GraphPreprocessor(prep, size, ["CPUExecutionProvider"], "test").prepare(volume)
    assert got is not None
    x, grid = got
    assert grid == ref_grid
    # No block averaging at these spacings (nothing rounded to int16 by the reference):
    # float rounding only (measured 5e-7).
    assert float(np.abs(x - ref_x).max()) < 1e-4


def test_cuda_that_cannot_start_falls_back_to_the_cpu_loudly(capfd):
    """Asked for CUDA where it cannot start (this machine has no GPU), the graph runs on
    the CPU, says so at error level, and gives the same input."""
    from aenode.infer.manifest import Preprocessing

    prep = Preprocessing.model_validate({"hu_window": [-1000.0, 300.0], "spacing_mm": [5.0, 3.0, 3.0]})
    hu = np.random.default_rng(3).integers(-1000, 300, size=(60, 64, 64), dtype=np.int16)
    volume = Volume(hu=hu, spacing_zyx=(1.0, 0.7, 0.7), origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                    sop_instance_uids=[None] * 60, paths=[""] * 60)
    graph = GraphPreprocessor(prep, (16, 32, 32), [("CUDAExecutionProvider", {"device_id": 0}),
                                                   "CPUExecutionProvider"], "test")
    assert graph.on_gpu
    got = graph.prepare(volume)
    assert got is not None and not graph.on_gpu
    out = capfd.readouterr()
    assert "preprocess_cuda_failed" in out.out + out.err
    ref_x, _ = preprocess(volume, prep, (16, 32, 32))
    assert float(np.abs(got[0] - ref_x).max()) < MAX_INPUT_DIFF
