"""ONNX Runtime models: one warm session per model package, and its predictions."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aenode.infer.domain import DomainResult, check_domain
from aenode.infer.findings import describe_maps
from aenode.infer.manifest import Manifest, ManifestError, load_manifest, verify_onnx
from aenode.infer.prepgraph import GraphPreprocessor, shared_preprocessor
from aenode.infer.preprocess import (
    ModelGrid,
    lesion_scores_on_series,
    map_to_series,
    mask_slices_on_series,
    preprocess,
)
from aenode.infer.runtime import onnxruntime_messages, resolve_providers
from aenode.load.volume import Volume
from aenode.logs import get_logger
from aenode.store.db import is_transient

log = get_logger("aenode.infer")

__all__ = ["Model", "Prediction", "calibrated", "onnxruntime_messages", "resolve_providers"]

# How a model's input is prepared from the loaded volume:
#   "auto":  the ONNX preprocessing graph (aenode.infer.prepgraph) on the model's execution
#            provider (the GPU when there is one; on the CPU it is faster than SimpleITK
#            too), SimpleITK for what the graph cannot express (oblique series);
#   "graph": the same (kept as a name for tests and benchmarks);
#   "sitk":  always SimpleITK on the CPU (the reference implementation).
PREPROCESS_METHODS = ("auto", "graph", "sitk")


@dataclass
class Prediction:
    model: str
    version: str
    category: str | None  # None: outside the model's validated domain (see ``domain``)
    probabilities: dict[str, float]
    alerts: list[str]
    involvement_percent: float | None
    lesion_volume_ml: float | None
    lung_volume_ml: float | None
    lesion_prob: np.ndarray | None = field(default=None, repr=False)  # model grid, z y x
    grid: ModelGrid | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    lung_prob: np.ndarray | None = field(default=None, repr=False)  # model grid, z y x (for the SEG)
    domain: DomainResult | None = None
    # Descriptive findings (surveillance records) are computed on demand: a distance
    # transform of the lung map (~0.1 s) that the SR must not wait for.
    findings_source: Callable[[], dict[str, object]] | None = field(default=None, repr=False)

    def findings(self) -> dict[str, object] | None:
        """Laterality and distribution (:mod:`aenode.infer.findings`), computed once."""
        if "findings" not in self.detail and self.findings_source is not None:
            self.detail["findings"] = self.findings_source()
        found = self.detail.get("findings")
        return found if isinstance(found, dict) else None

    @property
    def out_of_domain(self) -> bool:
        return self.domain is not None and not self.domain.inside

    def lesion_mask_on_series(self, volume: Volume, threshold: float = 0.5) -> np.ndarray | None:
        """The lesion map as a uint8 mask on the series grid (for overlays), computed on demand."""
        if self.lesion_prob is None or self.grid is None:
            return None
        return map_to_series(self.lesion_prob, self.grid, volume, threshold)

    def lesion_scores_on_series(self, volume: Volume, threshold: float = 0.5) -> np.ndarray | None:
        """Lesion area per series slice, from the model grid (cheap: no resampling)."""
        if self.lesion_prob is None or self.grid is None:
            return None
        return lesion_scores_on_series(self.lesion_prob, self.grid, volume, threshold)

    def lesion_masks_on_slices(self, volume: Volume, slices: list[int],
                               threshold: float = 0.5) -> dict[int, np.ndarray] | None:
        """The lesion map on the given series slices only (the secondary capture's)."""
        if self.lesion_prob is None or self.grid is None:
            return None
        return mask_slices_on_series(self.lesion_prob, self.grid, volume, slices, threshold)

    def lung_mask_on_series(self, volume: Volume, threshold: float = 0.5) -> np.ndarray | None:
        """The lung map as a uint8 mask on the series grid (for the SEG), computed on demand."""
        if self.lung_prob is None or self.grid is None:
            return None
        return map_to_series(self.lung_prob, self.grid, volume, threshold)

    def as_dict(self) -> dict[str, Any]:
        probs = {k: round(v, 4) for k, v in self.probabilities.items()}
        out_of_domain = self.out_of_domain
        return {
            "model": self.model, "version": self.version, "category": self.category,
            "domain": None if self.domain is None else self.domain.as_dict(),
            # Outside the domain the class probabilities are withheld (they would read as a
            # category); kept apart for audit only.
            "probabilities": {} if out_of_domain else probs,
            **({"withheld_probabilities": probs} if out_of_domain else {}),
            "alerts": self.alerts,
            "involvement_percent": None if self.involvement_percent is None or out_of_domain
            else round(self.involvement_percent, 2),
            "lesion_volume_ml": None if self.lesion_volume_ml is None else round(self.lesion_volume_ml, 1),
            "lung_volume_ml": None if self.lung_volume_ml is None else round(self.lung_volume_ml, 1),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


class Model:
    """A model package with its ONNX Runtime session, created once and kept warm."""

    def __init__(self, package_dir: str | Path, providers: list[str] | None = None, device_id: int = 0,
                 preprocess: str = "auto"):
        import onnxruntime as ort

        if preprocess not in PREPROCESS_METHODS:
            raise ValueError(f"preprocess: one of {', '.join(PREPROCESS_METHODS)}, not {preprocess!r}")

        self.package_dir = Path(package_dir)
        self.manifest: Manifest = load_manifest(self.package_dir)
        onnx_path = verify_onnx(self.package_dir, self.manifest)
        wanted = providers or ["cpu"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 2  # warnings and worse, routed into our log below
        resolved = resolve_providers(wanted, device_id)
        try:
            with onnxruntime_messages(self.manifest.name):
                self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=resolved)
        except Exception as exc:  # noqa: BLE001
            raise ManifestError(str(onnx_path), [f"onnx: ONNX Runtime cannot load the model ({exc})"]) from None
        self.providers = self.session.get_providers()
        if any(not isinstance(p, str) for p in resolved) and "CUDAExecutionProvider" not in self.providers:
            log.warning("model_cuda_unavailable", model=self.manifest.name,
                        hint="the CUDA provider could not start; running on the CPU")
        self._check_io()
        self.last_prepare_method = ""  # how the last input was prepared (for the timeline log)
        self.graph: GraphPreprocessor | None = None
        if preprocess != "sitk":
            on_gpu = "CUDAExecutionProvider" in self.providers
            self.graph = shared_preprocessor(self.manifest.preprocessing, self.manifest.input.size_zyx,
                                           resolve_providers(["cuda", "cpu"] if on_gpu else ["cpu"], device_id),
                                           self.manifest.name)
        log.info("model_loaded", model=self.manifest.name, version=self.manifest.version,
                 providers=self.providers)

    def warm_up(self) -> float:
        """One run on a zero input so the first study does not pay the provider's start-up
        (about 0.9 s for CUDA); returns the seconds it took."""
        m = self.manifest
        shape = [1, *(int(d) for d in m.input.shape[1:])]
        x = np.zeros(shape, dtype=np.float16 if m.input.dtype == "float16" else np.float32)
        t0 = time.perf_counter()
        with onnxruntime_messages(m.name):
            self.run(x)
        seconds = time.perf_counter() - t0
        graph_s = self.graph.warm_up() if self.graph is not None else None
        log.info("model_warmed_up", model=m.name, seconds=round(seconds, 3), providers=self.providers,
                 preprocess_graph_s=None if graph_s is None else round(graph_s, 3))
        return seconds

    @property
    def name(self) -> str:
        return self.manifest.name

    def _check_io(self) -> None:
        m = self.manifest
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        where = str(self.package_dir / "model.toml")
        if m.input.name not in inputs:
            raise ManifestError(where, [f"input.name: the ONNX model has no input {m.input.name!r} "
                                        f"(it has {', '.join(sorted(inputs))})"])
        declared = inputs[m.input.name].shape
        for axis, (want, have) in enumerate(zip(m.input.shape[1:], declared[1:]), start=1):
            if isinstance(have, int) and have != want:
                raise ManifestError(where, [f"input.shape: axis {axis} is {want} in the manifest, {have} in the model"])
        for key, name in [("outputs.probabilities", m.outputs.probabilities),
                          ("outputs.lesion_map.name", m.outputs.lesion_map.name if m.outputs.lesion_map else None),
                          ("outputs.lung_map.name", m.outputs.lung_map.name if m.outputs.lung_map else None),
                          ("domain.feature_distance.output", self._distance_output)]:
            if name is not None and name not in outputs:
                raise ManifestError(where, [f"{key}: the ONNX model has no output {name!r} "
                                            f"(it has {', '.join(sorted(outputs))})"])

    def prepare(self, volume: Volume) -> tuple[np.ndarray, ModelGrid]:
        m = self.manifest
        prepared = None
        if self.graph is not None:
            try:
                prepared = self.graph.prepare(volume)
            except Exception as exc:  # noqa: BLE001 - e.g. the GPU failing: loudly, then the CPU
                if is_transient(exc) and not self.graph.on_gpu:
                    raise  # out of host memory: the study is retried later
                log.error("preprocess_graph_failed", model=m.name, error=f"{type(exc).__name__}: {exc}"[:500],
                          fallback="sitk", on_gpu=self.graph.on_gpu)
        if prepared is not None:
            assert self.graph is not None
            self.last_prepare_method = "graph-" + ("cuda" if self.graph.on_gpu else "cpu")
            x, grid = prepared
        else:
            self.last_prepare_method = "sitk"
            x, grid = preprocess(volume, m.preprocessing, m.input.size_zyx)
        if m.input.dtype == "float16":
            x = x.astype(np.float16)
        return x, grid

    @property
    def _distance_output(self) -> str | None:
        d = self.manifest.domain
        return d.feature_distance.output if d is not None and d.feature_distance is not None else None

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        m = self.manifest
        names = [m.outputs.probabilities]
        if m.outputs.lesion_map:
            names.append(m.outputs.lesion_map.name)
        if m.outputs.lung_map:
            names.append(m.outputs.lung_map.name)
        if self._distance_output:
            names.append(self._distance_output)
        values = self.session.run(names, {m.input.name: x})
        return dict(zip(names, values))

    def input_key(self) -> tuple[object, ...]:
        """Models with the same key take the same input tensor from a volume (shared
        preprocessing: a study is resampled once for all of them)."""
        m = self.manifest
        return (m.preprocessing.model_dump_json(), tuple(m.input.size_zyx), m.input.dtype)

    def predict(self, volume: Volume, prepared: tuple[np.ndarray, ModelGrid] | None = None) -> Prediction:
        """Classify one volume; ``prepared``: this model's input from :meth:`prepare` (or
        from another model with the same :meth:`input_key`)."""
        t0 = time.perf_counter()
        x, grid = prepared if prepared is not None else self.prepare(volume)
        t1 = time.perf_counter()
        out = self.run(x)
        t2 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "inference": t2 - t1}
        pred = self.interpret(out, grid, timings=timings, x=x)
        timings["interpret"] = time.perf_counter() - t2  # domain gate, volumes, findings
        return pred

    def interpret(self, out: dict[str, np.ndarray], grid: ModelGrid, timings: dict[str, float],
                  x: np.ndarray | None = None) -> Prediction:
        """The prediction from the raw outputs; ``x`` (the model input) lets the domain gate
        measure lung HU (without it, a declared ``[domain]`` cannot be checked and the study
        is treated as outside the domain: the gate fails closed)."""
        m = self.manifest
        raw = np.asarray(out[m.outputs.probabilities], dtype=np.float64).reshape(-1)
        if raw.shape[0] != len(m.outputs.classes):
            raise ValueError(f"model {m.name} returned {raw.shape[0]} probabilities for "
                             f"{len(m.outputs.classes)} classes")
        probs = calibrated(raw, m.outputs.scores, m.outputs.temperature)
        probabilities = {c.name: float(p) for c, p in zip(m.outputs.classes, probs)}
        category: str | None = m.outputs.classes[int(np.argmax(probs))].name
        alerts = [c.name for c in m.outputs.classes if c.alert and probabilities[c.name] >= c.alert_threshold]
        lesion_prob = lung_prob = involvement = lesion_ml = lung_ml = None
        lung = None
        findings_source = None
        detail: dict[str, Any] = {"raw_scores": {c.name: float(v) for c, v in zip(m.outputs.classes, raw)}}
        if m.outputs.lung_map:
            lung_prob = np.asarray(out[m.outputs.lung_map.name], dtype=np.float32)[0, 0]
        if m.outputs.lesion_map:
            lesion_prob = np.asarray(out[m.outputs.lesion_map.name], dtype=np.float32)[0, 0]
            lesion = lesion_prob >= m.outputs.lesion_map.threshold
            if m.outputs.lung_map and lung_prob is not None:
                lung = lung_prob >= m.outputs.lung_map.threshold
                lung |= lesion  # consolidated lung is lung too
                lung_ml = float(lung.sum()) * grid.voxel_volume_ml
                lesion_ml = float((lesion & lung).sum()) * grid.voxel_volume_ml
                involvement = 100.0 * lesion_ml / lung_ml if lung_ml > 0 else 0.0
            else:
                lung = None
                lesion_ml = float(lesion.sum()) * grid.voxel_volume_ml
            findings_source = functools.partial(describe_maps, lesion, lung, grid.spacing_zyx)
        elif lung_prob is not None and m.outputs.lung_map:
            lung = lung_prob >= m.outputs.lung_map.threshold
        domain = None
        if m.domain is not None:
            if x is None:
                lung = None  # fail closed: nothing to measure on
            distance = None
            if self._distance_output and self._distance_output in out:
                distance = float(np.asarray(out[self._distance_output], dtype=np.float64).reshape(-1)[0])
            domain = check_domain(m.domain, x if x is not None else np.zeros(0), lung, grid.voxel_volume_ml,
                                  m.preprocessing, feature_distance=distance)
            if not domain.inside:
                # No category, no alert class: the model's answer is not trusted here.
                category, alerts = None, []
        return Prediction(
            model=m.name, version=m.version, category=category, probabilities=probabilities, alerts=alerts,
            involvement_percent=involvement, lesion_volume_ml=lesion_ml, lung_volume_ml=lung_ml,
            lesion_prob=lesion_prob, grid=grid, timings=timings, detail=detail, lung_prob=lung_prob,
            domain=domain, findings_source=findings_source,
        )


def calibrated(raw: np.ndarray, scores: str, temperature: float) -> np.ndarray:
    """Class probabilities from the model's output tensor, temperature-scaled.

    Logits are divided by T before the softmax; softmax probabilities are turned back into
    logits with log(p) first (the softmax of log p is p, so T = 1 changes nothing)."""
    logits = np.asarray(raw, dtype=np.float64)
    if scores == "probabilities":
        if temperature == 1.0:
            return logits
        logits = np.log(np.clip(logits, 1e-12, 1.0))
    z = logits / temperature
    z -= z.max()
    e = np.exp(z)
    return e / e.sum()
