"""Inference-stage benchmark: a 400-slice 512x512 chest CT through load, preprocessing, model.

    python benchmarks/bench_inference.py                     # CPU, generates the study
    python benchmarks/bench_inference.py --provider cuda     # GPU (onnxruntime-gpu installed)
    python benchmarks/bench_inference.py --study DIR --repeats 5 --json

Stages (median of --repeats, page cache warm):
  load        aenode.load.load_series on the series' instance rows (what the worker does:
              geometry checks, sorting, rescale to int16 HU, slice by slice)
  baseline    plain pydicom: dcmread + pixel_array of the same files, np.stack
  preprocess  aenode.infer.preprocess (anti-aliasing, resampling to the model grid, window)
  inference   ONNX Runtime session.run (input from host memory, outputs back to host)
  map back    lesion map resampled onto the 512x512x400 series grid (for the SC overlay)
The load/baseline ratio is measured in the same run (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402

from aenode.infer.engine import Model  # noqa: E402
from aenode.infer.manifest import load_manifest  # noqa: E402
from aenode.load import load_series  # noqa: E402
from aenode.select import select_series  # noqa: E402
from aenode.store.meta import read_meta  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, help="existing study folder (default: generate one)")
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--thickness", type=float, default=1.0)
    ap.add_argument("--transfer-syntax", default="explicit", help="phantom transfer syntax name")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "covid-typicality")
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-repeats", type=int, default=20, help="repeats of the model call alone")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = None
    study = args.study
    if study is None:
        from aenode.phantom import generate_study

        tmp = tempfile.TemporaryDirectory(prefix="aenode-bench-")
        study = Path(tmp.name) / "study"
        t = time.perf_counter()
        generate_study(study, "typical", seed=424242, slices=args.slices, slice_thickness=args.thickness,
                       transfer_syntax=args.transfer_syntax, extra_series=False)
        print(f"generated {args.slices}-slice study in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    manifest = load_manifest(args.model)
    files = sorted(p for p in study.rglob("*.dcm"))
    infos = [read_meta(f) for f in files]
    sel = select_series(infos, manifest.selection)
    assert sel.selected is not None, sel.reason
    series = list(sel.selected.instances)
    paths = [i.path for i in series]
    for p in paths:  # warm the page cache for both contenders
        Path(p).read_bytes()

    def baseline():
        return np.stack([pydicom.dcmread(p).pixel_array for p in paths])

    def load():
        return load_series(series)

    # interleave so both see the same machine state
    t_base, t_load = [], []
    for _ in range(args.repeats):
        t_base.append(timed(baseline, 1)[0])
        t_load.append(timed(load, 1)[0])
    t_base_med, t_load_med = statistics.median(t_base), statistics.median(t_load)
    t_headers, _ = timed(lambda: [read_meta(p) for p in paths], 1)
    volume = load()

    model = Model(args.model, providers=[args.provider] + (["cpu"] if args.provider != "cpu" else []),
                  device_id=args.device_id)
    t_prep, (x, grid) = timed(lambda: model.prepare(volume), args.repeats)
    model.run(x)  # warm-up (CUDA: kernels, memory arena)
    model.run(x)
    t_inf, out = timed(lambda: model.run(x), args.model_repeats)
    pred = model.interpret(out, grid, timings={}, x=x)  # x: the domain gate measures the lung on it
    t_map, mask = timed(lambda: pred.lesion_mask_on_series(volume), 1)
    total = t_load_med + t_prep + t_inf
    res = {
        "machine": describe(),
        "onnxruntime_providers": model.providers,
        "slices": int(volume.shape[0]), "matrix": f"{volume.shape[1]}x{volume.shape[2]}",
        "transfer_syntax": args.transfer_syntax,
        "series_mb": round(sum(Path(p).stat().st_size for p in paths) / 1e6, 1),
        "load_s": round(t_load_med, 3), "baseline_pydicom_stack_s": round(t_base_med, 3),
        "load_over_baseline": round(t_load_med / t_base_med, 3),
        "header_scan_s": round(t_headers, 3),
        "preprocess_s": round(t_prep, 3), "inference_s": round(t_inf, 4),
        "inference_ms": round(t_inf * 1000, 1),
        "total_s": round(total, 3), "map_back_s": round(t_map, 3),
        "category": pred.category, "involvement_percent": round(pred.involvement_percent or 0, 2),
        "peak_rss_mb": None,
    }
    try:
        import resource

        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    except ImportError:
        pass
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"machine: {res['machine']}; ONNX Runtime providers {res['onnxruntime_providers']}")
        print(f"study: {res['slices']} slices {res['matrix']}, {res['series_mb']} MB, {res['transfer_syntax']}")
        print(f"  load and decode     {res['load_s']:8.3f} s   (plain pydicom read+stack {res['baseline_pydicom_stack_s']:.3f} s, "
              f"ratio {res['load_over_baseline']:.2f}, target <= 1.2)")
        print(f"  preprocessing       {res['preprocess_s']:8.3f} s")
        print(f"  inference (model)   {res['inference_s']:8.4f} s   ({res['inference_ms']} ms; GPU target <= 50 ms)")
        print(f"  total               {res['total_s']:8.3f} s   (load + preprocessing + inference)")
        print(f"  lesion map -> series grid {res['map_back_s']:.3f} s (for the SC overlay, on demand)")
        print(f"  header scan (predict CLI only; the worker uses the index) {res['header_scan_s']:.3f} s")
        print(f"  peak RSS {res['peak_rss_mb']} MB; result {res['category']}, involvement {res['involvement_percent']} %")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
