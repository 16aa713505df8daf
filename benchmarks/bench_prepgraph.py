"""Model-input preprocessing: SimpleITK (CPU) vs the ONNX graph on the CPU and on CUDA.

Generates one 300-slice 512 x 512 chest CT (1.07 mm, ``typical`` phantom), loads it, and
times (median of ``--repeats``, after one untimed run) the reference
:func:`aenode.infer.preprocess.preprocess` and :class:`aenode.infer.prepgraph.GraphPreprocessor`
on each available execution provider, interleaved in the same run.  For each graph run: the
max abs difference of the model input against SimpleITK's, and both reference models'
category and probabilities on it (same category, probabilities within 0.01 expected).

    python benchmarks/bench_prepgraph.py [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402


def main() -> int:
    import numpy as np
    import onnxruntime as ort

    from aenode.infer.prepgraph import GraphPreprocessor
    from aenode.infer.preprocess import preprocess
    from aenode.infer.registry import ModelRegistry
    from aenode.infer.runtime import resolve_providers
    from aenode.load.volume import load_series
    from aenode.phantom import generate_study

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--study", type=Path, help="an existing study folder instead of a generated one")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    print(f"# machine: {describe()}; onnxruntime {ort.__version__} {ort.get_available_providers()}", flush=True)
    study = args.study
    if study is None:
        root = Path(tempfile.mkdtemp(prefix="aenode-prepgraph-"))
        atexit.register(shutil.rmtree, root, True)
        study = root / "s"
        # In a child process: generating leaves this process's heap in a state that made
        # SimpleITK's large allocations several times slower afterwards (2.6 s vs 0.6 s).
        with ProcessPoolExecutor(1) as pool:
            pool.submit(generate_study, study, "typical", seed=4242, slices=args.slices, extra_series=False,
                        slice_thickness=round(320.0 / args.slices, 3)).result()
    files = sorted(f for f in study.rglob("*.dcm") if "ground_truth" not in f.parts)
    volume = load_series(files)
    models = list(ModelRegistry.load(Path(__file__).resolve().parents[1] / "models"))
    m0 = models[0].manifest
    prep, size = m0.preprocessing, m0.input.size_zyx
    ref_x, ref_grid = preprocess(volume, prep, size)
    ref = {m.name: m.predict(volume, (ref_x, ref_grid)) for m in models}
    graphs = {"cpu": GraphPreprocessor(prep, size, ["CPUExecutionProvider"], "bench")}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        graphs["cuda"] = GraphPreprocessor(prep, size, resolve_providers(["cuda", "cpu"]), "bench")
    for g in graphs.values():
        g.warm_up()
        g.prepare(volume)
    times: dict[str, list[float]] = {"sitk": [], **{f"graph-{k}": [] for k in graphs}}
    out: dict[str, object] = {"machine": describe(), "volume": list(volume.shape), "onnxruntime": ort.__version__}
    checks: dict[str, dict[str, object]] = {}
    # Timing first (the models' sessions leave threads spinning after a run, which would
    # slow whatever runs next), then the checks.
    results = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        preprocess(volume, prep, size)
        times["sitk"].append(time.perf_counter() - t0)
        for name, g in graphs.items():
            t0 = time.perf_counter()
            results[name] = g.prepare(volume)
            times[f"graph-{name}"].append(time.perf_counter() - t0)
    for name, g in graphs.items():
        got = results[name]
        assert got is not None
        x, grid = got
        preds = {m.name: m.predict(volume, (x, grid)) for m in models}
        checks[f"graph-{name}"] = {
            "on_gpu": g.on_gpu,
            "max_abs_input_diff": float(np.abs(x - ref_x).max()),
            "same_grid": grid == ref_grid,
            "same_category": all(preds[k].category == ref[k].category for k in ref),
            "max_prob_diff": max(abs(preds[k].probabilities[c] - ref[k].probabilities[c])
                                 for k in ref for c in ref[k].probabilities),
        }
    out["median_s"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    out["min_s"] = {k: round(min(v), 4) for k, v in times.items()}
    out["ratio_to_sitk"] = {k: round(statistics.median(v) / statistics.median(times["sitk"]), 3)
                            for k, v in times.items() if k != "sitk"}
    out["checks"] = checks
    print(json.dumps(out, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    ok = all(c["same_category"] and c["same_grid"] and float(c["max_prob_diff"]) < 0.01  # type: ignore[arg-type]
             for c in checks.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
