"""The model-input preprocessing as an ONNX graph, run where the model runs (the GPU).

:func:`aenode.infer.preprocess.preprocess` (SimpleITK, CPU) is the reference.  For a series
whose axes lie along the patient axes (any order, any sign: every axial, coronal or
sagittal series, flipped or not) each of its steps is *separable* and *linear*:

- the block averaging (``BinShrink``) is an ``AveragePool`` with kernel = stride = factor;
- the recursive Gaussian along one axis is a fixed n x n matrix (its impulse responses,
  taken from SimpleITK itself, so ITK's boundary handling is reproduced exactly);
- linear resampling onto the model grid along one axis is an N x n matrix with two
  non-zero weights per row (zero rows outside the series: padded with ``pad_hu``).

So the whole chain is: cast the raw int16 stack, pool, three ``MatMul`` with small
per-study matrices (Gaussian and interpolation folded together), transpose into the
model's z, y, x order, pad, clip to the HU window, normalise.  The graph has only
operators the CUDA execution provider implements for these shapes (Cast, AveragePool 3-D,
MatMul, Transpose, Mul/Add/Sub, Clip, Reshape), and the only upload is the int16 stack the
loader produced.  An oblique series (a tilted gantry leaves its column vector tilted) is not
separable: :meth:`GraphPreprocessor.prepare` returns None and the caller uses SimpleITK.

Why by hand: no library turns an ITK resampling pipeline into an ONNX graph; the pieces
are ONNX's own operators and SimpleITK's own filters.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from aenode.infer.manifest import Preprocessing
from aenode.infer.preprocess import ModelGrid, grid_for
from aenode.infer.runtime import onnxruntime_messages
from aenode.load.volume import Volume
from aenode.logs import get_logger

log = get_logger("aenode.infer")

OPSET = 17
# On the CPU the graph holds a float32 copy of the series (4 bytes a voxel, kept by ONNX
# Runtime's arena): beyond 640 slices of 512 x 512 (0.7 GB) SimpleITK does it instead.
MAX_CPU_VOXELS = 640 * 512 * 512
# A direction cosine this close to +-1 counts as along a patient axis (0.01 mm over 250 mm).
_ALIGNED = 1e-6


@dataclass(frozen=True)
class SeparablePlan:
    """Everything per study that the graph needs, in the volume's array axis order (z, y, x)."""

    factors: tuple[int, int, int]          # block averaging per array axis
    perm: tuple[int, int, int]             # final transpose into the model's z, y, x
    matrices_t: tuple[np.ndarray, np.ndarray, np.ndarray]  # per array axis: [n'_k, N_p(k)] float32
    inside: tuple[np.ndarray, np.ndarray, np.ndarray]      # per model axis z, y, x: [N] float32 0/1


def _patient_axes(direction: np.ndarray) -> list[tuple[int, float]] | None:
    """Per array axis (z, y, x): the patient axis (0 x, 1 y, 2 z) it runs along and its sign;
    None when an axis is oblique."""
    out = []
    for k in range(3):
        col = direction[:, 2 - k]   # direction columns are the x, y, z array axes' vectors
        p = int(np.argmax(np.abs(col)))
        if abs(abs(float(col[p])) - 1.0) > _ALIGNED:
            return None
        out.append((p, float(np.sign(col[p]))))
    if len({p for p, _ in out}) != 3:
        return None
    return out


_gauss_cache: dict[tuple[int, float, float], np.ndarray] = {}
_gauss_lock = threading.Lock()


def _gaussian_matrix(n: int, spacing: float, sigma: float) -> np.ndarray:
    """The n x n operator of SimpleITK's recursive Gaussian along one axis (sigma in mm),
    column j its response to an impulse at j: measured on SimpleITK itself, boundaries and
    all (the other axes get the tiny sigma the reference path gives a zero-sigma axis)."""
    key = (n, round(spacing, 9), round(sigma, 9))
    with _gauss_lock:
        hit = _gauss_cache.get(key)
    if hit is not None:
        return hit
    if n < 4:  # ITK's recursive filter needs 4 samples; the reference refuses such series too
        raise ValueError("fewer than 4 samples along an axis")
    impulses = np.zeros((4, n, n), dtype=np.float32)   # z (constant), y = impulse index, x = axis
    idx = np.arange(n)
    impulses[:, idx, idx] = 1.0
    img = sitk.GetImageFromArray(impulses)
    img.SetSpacing((spacing, 1.0, 1.0))
    g = sitk.SmoothingRecursiveGaussianImageFilter()
    g.SetSigma([max(sigma, 1e-3), 1e-3, 1e-3])
    out = sitk.GetArrayFromImage(g.Execute(img))[0]   # [impulse j, x]
    mat = np.ascontiguousarray(out.T, dtype=np.float64)  # [x, j]
    with _gauss_lock:
        _gauss_cache[key] = mat
    return mat


def _interpolation(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """ITK's linear interpolation at continuous indices ``c`` of an axis of ``n`` samples:
    an [len(c), n] matrix and the inside mask (ITK: -0.5 <= c < n - 0.5; nearer the border
    than the last sample centre, the border value)."""
    m = np.zeros((len(c), n), dtype=np.float64)
    inside = (c >= -0.5) & (c < n - 0.5)
    rows = np.nonzero(inside)[0]
    base = np.floor(c[rows])
    w = c[rows] - base
    i0 = np.clip(base.astype(np.int64), 0, n - 1)
    i1 = np.clip(base.astype(np.int64) + 1, 0, n - 1)
    np.add.at(m, (rows, i0), 1.0 - w)
    np.add.at(m, (rows, i1), w)
    return m, inside.astype(np.float32)


def plan(volume: Volume, prep: Preprocessing, size_zyx: tuple[int, int, int]) -> tuple[SeparablePlan, ModelGrid] | None:
    """The per-study operators of :func:`aenode.infer.preprocess.preprocess`, or None when
    the series is oblique (not separable)."""
    axes = _patient_axes(np.asarray(volume.direction, dtype=np.float64))
    if axes is None:
        return None
    shape = volume.shape
    spacing = volume.spacing_zyx
    direction = np.asarray(volume.direction, dtype=np.float64)
    size_xyz = (shape[2], shape[1], shape[0])
    grid = grid_for(size_xyz, (spacing[2], spacing[1], spacing[0]), volume.origin, direction, prep, size_zyx)
    target_by_patient = (grid.spacing_zyx[2], grid.spacing_zyx[1], grid.spacing_zyx[0])  # x, y, z
    factors = [1, 1, 1]
    sigmas = [0.0, 0.0, 0.0]
    if prep.antialias:  # the same rules as preprocess._antialias, per array axis
        for k in range(3):
            target = target_by_patient[axes[k][0]]
            factors[k] = max(1, int(math.floor(target / (2.0 * spacing[k]) + 1e-3)))
        for k in range(3):
            target = target_by_patient[axes[k][0]]
            sigmas[k] = 0.4 * target if target > 1.5 * spacing[k] * factors[k] else 0.0
    smooth = prep.antialias and any(s > 0 for s in sigmas)
    # Where the shrunk image's sample 0 lies: the centre of the first block on every axis.
    origin = np.asarray(volume.origin, dtype=np.float64)
    for k in range(3):
        origin = origin + direction[:, 2 - k] * ((factors[k] - 1) / 2.0 * spacing[k])
    matrices: list[np.ndarray] = []
    inside_by_model: dict[int, np.ndarray] = {}
    for k in range(3):
        p, sign = axes[k]
        n = shape[k] // factors[k]
        step = spacing[k] * factors[k]
        j = 2 - p   # model array axis of patient axis p
        positions = grid.origin_xyz[p] + np.arange(grid.size_zyx[j]) * grid.spacing_zyx[j]
        c = sign * (positions - origin[p]) / step
        interp, inside = _interpolation(c, n)
        mat = interp @ _gaussian_matrix(n, step, sigmas[k]) if smooth else interp
        matrices.append(np.ascontiguousarray(mat.T, dtype=np.float32))
        inside_by_model[j] = inside
    # After the three MatMuls the axes are (array x, array y, array z) -> model axes.
    order = [2 - axes[k][0] for k in (2, 1, 0)]          # model axis at each position
    perm = tuple(order.index(j) for j in range(3))
    return SeparablePlan(tuple(factors), perm, (matrices[0], matrices[1], matrices[2]),  # type: ignore[arg-type]
                         (inside_by_model[0], inside_by_model[1], inside_by_model[2])), grid


def build_graph(prep: Preprocessing, factors: tuple[int, int, int], perm: tuple[int, int, int]) -> bytes:
    """The ONNX model (serialised) for one (pooling factors, axis permutation)."""
    import onnx
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    lo, hi = (float(v) for v in prep.hu_window)
    if prep.normalisation == "minmax":
        shift, scale = lo, 1.0 / (hi - lo)
    else:
        shift, scale = float(prep.mean), 1.0 / float(prep.std)
    consts = {
        "lo": lo, "hi": hi, "pad": float(prep.pad_hu), "one": 1.0, "shift": shift, "scale": scale,
    }
    inits = [helper.make_tensor(k, f, [], [v]) for k, v in consts.items()]
    inits += [helper.make_tensor("ax01", TensorProto.INT64, [2], [0, 1]),
              helper.make_tensor("shape_z", TensorProto.INT64, [3], [-1, 1, 1]),
              helper.make_tensor("shape_y", TensorProto.INT64, [3], [1, -1, 1]),
              helper.make_tensor("shape_x", TensorProto.INT64, [3], [1, 1, -1])]
    nodes = [helper.make_node("Cast", ["hu"], ["v0"], to=f)]
    src = "v0"
    if any(x > 1 for x in factors):
        nodes += [helper.make_node("Unsqueeze", ["v0", "ax01"], ["v0u"]),
                  helper.make_node("AveragePool", ["v0u"], ["v0p"], kernel_shape=list(factors), strides=list(factors)),
                  helper.make_node("Squeeze", ["v0p", "ax01"], ["v1"])]
        src = "v1"
    nodes += [
        helper.make_node("MatMul", [src, "mx"], ["a"]),                  # [Z, Y, Nx']
        helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]),    # [Z, Nx', Y]
        helper.make_node("MatMul", ["at", "my"], ["b"]),                 # [Z, Nx', Ny']
        helper.make_node("Transpose", ["b"], ["bt"], perm=[1, 2, 0]),    # [Nx', Ny', Z]
        helper.make_node("MatMul", ["bt", "mz"], ["c"]),                 # [Nx', Ny', Nz']
        helper.make_node("Transpose", ["c"], ["d"], perm=list(perm)),     # model z, y, x
        helper.make_node("Reshape", ["iz", "shape_z"], ["iz3"]),
        helper.make_node("Reshape", ["iy", "shape_y"], ["iy3"]),
        helper.make_node("Reshape", ["ix", "shape_x"], ["ix3"]),
        helper.make_node("Mul", ["iz3", "iy3"], ["izy"]),
        helper.make_node("Mul", ["izy", "ix3"], ["inside"]),
        helper.make_node("Sub", ["one", "inside"], ["outside"]),
        helper.make_node("Mul", ["outside", "pad"], ["padding"]),
        helper.make_node("Add", ["d", "padding"], ["e"]),
        helper.make_node("Clip", ["e", "lo", "hi"], ["g"]),
        helper.make_node("Sub", ["g", "shift"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["k"]),
        helper.make_node("Unsqueeze", ["k", "ax01"], ["x"]),
    ]
    inputs = [helper.make_tensor_value_info("hu", TensorProto.INT16, ["Z", "Y", "X"]),
              helper.make_tensor_value_info("mz", f, ["Zs", "Nz_"]),
              helper.make_tensor_value_info("my", f, ["Ys", "Ny_"]),
              helper.make_tensor_value_info("mx", f, ["Xs", "Nx_"]),
              helper.make_tensor_value_info("iz", f, ["Nz"]),
              helper.make_tensor_value_info("iy", f, ["Ny"]),
              helper.make_tensor_value_info("ix", f, ["Nx"])]
    outputs = [helper.make_tensor_value_info("x", f, [1, 1, "Nz", "Ny", "Nx"])]
    graph = helper.make_graph(nodes, "aenode_preprocess", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="aenode")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class GraphPreprocessor:
    """One model's preprocessing on its execution provider; sessions cached per graph shape
    (pooling factors and axis order: the same for every study of a scanner protocol)."""

    def __init__(self, prep: Preprocessing, size_zyx: tuple[int, int, int], providers: list[Any], model: str):
        self.prep = prep
        self.size_zyx = size_zyx
        self.model = model
        self.on_gpu = False
        self.providers: list[Any] = []
        for p in providers:
            if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider":
                # Full float32 in the MatMuls: TF32 would round the HU values to ~3 digits.
                self.providers.append((p[0], {**p[1], "use_tf32": "0"}))
                self.on_gpu = True
            else:
                self.providers.append(p)
        self._sessions: dict[tuple[tuple[int, int, int], tuple[int, int, int]], Any] = {}
        self._lock = threading.Lock()
        self.warmed_up = False

    def _new_session(self, graph: bytes, providers: list[Any]) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 2
        # The model's session runs right after this one: idle threads spinning here would take
        # its cores (on 2 cores the model ran 3x slower).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # This process's share of the cores (``aenode serve`` sets it per analysis process
        # for SimpleITK, [workers] threads_per_analysis), not every core of the machine.
        opts.intra_op_num_threads = max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
        # ONNX Runtime's memory arena keeps the float copy of a series (~0.3 GB for 300 x
        # 512 x 512) allocated between studies: without it, every study pays the page faults
        # again (0.41 s instead of 0.22 s on the 2-core VM).  The price is that much resident
        # memory per analysis process on a CPU-only node.
        with onnxruntime_messages(self.model):
            return ort.InferenceSession(graph, sess_options=opts, providers=providers)

    def _session(self, factors: tuple[int, int, int], perm: tuple[int, int, int]) -> Any:
        key = (factors, perm)
        with self._lock:
            if key in self._sessions:
                return self._sessions[key]
            graph = build_graph(self.prep, factors, perm)
            try:
                try:
                    session = self._new_session(graph, self.providers)
                except Exception:  # noqa: BLE001 - an ONNX Runtime without the TF32 switch?
                    if not self.on_gpu:
                        raise
                    self.providers = [(p[0], {k: v for k, v in p[1].items() if k != "use_tf32"})
                                      if isinstance(p, tuple) else p for p in self.providers]
                    session = self._new_session(graph, self.providers)
                    log.warning("preprocess_tf32_switch_unsupported", model=self.model)
            except Exception as exc:  # noqa: BLE001 - the GPU refusing: say so, use the CPU
                if not self.on_gpu:
                    raise
                log.error("preprocess_cuda_failed", model=self.model, error=f"{type(exc).__name__}: {exc}"[:500],
                          fallback="cpu")
                self.on_gpu = False
                self.providers = ["CPUExecutionProvider"]
                session = self._new_session(graph, self.providers)
            if self.on_gpu and "CUDAExecutionProvider" not in session.get_providers():
                log.error("preprocess_cuda_failed", model=self.model, error="the CUDA provider did not start",
                          fallback="cpu")
                self.on_gpu = False
            self._sessions[key] = session
            return session

    def prepare(self, volume: Volume) -> tuple[np.ndarray, ModelGrid] | None:
        """The model input [1, 1, z, y, x] float32 and its grid; None for an oblique series
        (and, on the CPU, for a series so large that its float copy would not be worth the
        memory: SimpleITK averages the blocks in int16 first)."""
        if not self.on_gpu and int(np.prod(volume.shape)) > MAX_CPU_VOXELS:
            return None
        planned = plan(volume, self.prep, self.size_zyx)
        if planned is None:
            return None
        p, grid = planned
        session = self._session(p.factors, p.perm)
        hu = volume.hu if volume.hu.flags.c_contiguous else np.ascontiguousarray(volume.hu)
        (x,) = session.run(["x"], {"hu": hu, "mz": p.matrices_t[0], "my": p.matrices_t[1], "mx": p.matrices_t[2],
                                   "iz": p.inside[0], "iy": p.inside[1], "ix": p.inside[2]})
        return x, grid

    def warm_up(self) -> float | None:
        """Create the sessions of the two usual protocols (thin slices: every axis pooled;
        thick slices: in-plane only) and run each once, so the first study pays neither
        session creation nor the provider's start-up; returns the seconds it took."""
        import time

        if self.warmed_up:
            return None  # shared with a model that warmed it up already
        self.warmed_up = True
        t0 = time.perf_counter()
        # On the GPU a full-size series (cheap there) also grows the device memory arena to
        # what a study needs, so the first study does not wait for allocations either.
        slices, side = (320, 512) if self.on_gpu else (48, 64)
        for slice_mm in (0.7, 2.5):
            hu = np.full((slices, side, side), -1000, dtype=np.int16)
            hu[slices // 4:-slices // 4, side // 4:-side // 4, side // 4:-side // 4] = 0
            vol = Volume(hu=hu, spacing_zyx=(slice_mm, 0.7, 0.7), origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                         sop_instance_uids=[None] * slices, paths=[""] * slices)
            self.prepare(vol)
        return time.perf_counter() - t0


_shared: dict[tuple[str, tuple[int, ...], str], GraphPreprocessor] = {}
_shared_lock = threading.Lock()


def shared_preprocessor(prep: Preprocessing, size_zyx: tuple[int, int, int], providers: list[Any],
                        model: str) -> GraphPreprocessor:
    """One :class:`GraphPreprocessor` per (preprocessing, input size, providers) in this
    process: models that take the same input share its sessions, memory and warm-up."""
    key = (prep.model_dump_json(), tuple(size_zyx), repr(providers))
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = _shared[key] = GraphPreprocessor(prep, size_zyx, providers, model)
        return found
