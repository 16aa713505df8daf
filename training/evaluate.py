"""Evaluate the exported package on held-out phantom seeds (numbers for MODEL_CARD.md).

    python training/evaluate.py --per-pattern 100 --processes 16   # 400 studies, seeds 100000+

Each held-out study gets its own randomised acquisition (``sample_acquisition``: slice
thickness 0.6-5 mm, kernel, dose, contrast, field of view, vendor), is generated at
scanner resolution (512 x 512 in-plane, contiguous slices of the drawn thickness over
300 mm) and goes through the node's own preprocessing and ONNX Runtime session
(``aenode.infer.engine.Model``) with the manifest's temperature and domain gate, so this
measures the shipped package, not the PyTorch weights.  A study the gate refuses counts
as wrong in the accuracy (and is reported separately).  Writes training/eval_results.json
and prints the markdown tables that MODEL_CARD.md quotes.
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import data
import numpy as np

EVAL_SEED0 = 100_000
_model = None


def _init() -> None:
    global _model
    import onnxruntime as ort  # noqa: F401

    from aenode.infer.engine import Model

    # The phantom arrives as a SimpleITK image, so the reference (SimpleITK) preprocessing is
    # the one measured here; the node's ONNX graph gives the same input to 2.7e-4
    # (tests/inference/test_prepgraph.py, docs/BENCHMARKS.md).
    _model = Model(data.PACKAGE, providers=["cpu"], preprocess="sitk")


def _manifest_temperature() -> float:
    from aenode.infer.manifest import load_manifest

    return float(load_manifest(data.PACKAGE).outputs.temperature)


def _one(job: tuple[str, int]) -> dict:
    from aenode.phantom import generate_volume
    from aenode.phantom.acquisition import sample_acquisition
    from aenode.phantom.anatomy import fov_for, sample_patient

    assert _model is not None
    pattern, seed = job
    acq = sample_acquisition(seed)
    thick = float(acq.slice_thickness_mm or 1.25)
    fov = fov_for(sample_patient(seed)) * acq.fov_scale
    n = int(round(300.0 / thick))
    pv = generate_volume(pattern, seed, shape_zyx=(n, 512, 512), spacing_zyx=(thick, fov / 512, fov / 512),
                         acquisition=acq, threads=1)
    lesion = np.isin(pv.lesion_mask, data.LESION_LABELS)
    lung = (pv.lung_mask > 0) | lesion
    true_inv = 100.0 * float(lesion.sum()) / max(1.0, float(lung.sum()))
    img = data.phantom_to_sitk(pv.hu, pv.spacing_zyx, pv.origin)
    variant = pv.pattern_variant
    del pv
    x, grid = _model.prepare(img)
    pred = _model.interpret(_model.run(x), grid, timings={}, x=x)
    return {"pattern": pattern, "seed": seed, "variant": variant, "thickness": thick, "kernel": acq.kernel, "dose": round(acq.dose, 3),
            "contrast": acq.contrast, "manufacturer": acq.manufacturer,
            "probabilities": [pred.probabilities[p] for p in data.PATTERNS],
            "predicted": pred.category, "out_of_domain": pred.out_of_domain,
            "domain": pred.domain.as_dict() if pred.domain else None,
            "true_involvement": true_inv, "involvement": pred.involvement_percent}


def metrics(rows: list[dict]) -> dict:
    k = len(data.PATTERNS)
    y = np.array([data.PATTERNS.index(r["pattern"]) for r in rows])
    p = np.array([r["probabilities"] for r in rows])
    # a study the domain gate refused has no category: it counts as wrong
    yhat = np.array([-1 if r.get("out_of_domain") else int(np.argmax(r["probabilities"])) for r in rows])
    cm = np.zeros((k, k), int)
    for a, b in zip(y, yhat):
        if b >= 0:
            cm[a, b] += 1
    per_class = {}
    for i, name in enumerate(data.PATTERNS):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = cm.sum() - tp - fn - fp
        per_class[name] = {"sensitivity": tp / max(1, tp + fn), "specificity": tn / max(1, tn + fp),
                           "n": int(cm[i].sum())}
    correct = (yhat == y).astype(float)
    # Calibration is measured on the studies that got probabilities (the gate withholds them)
    kept = yhat >= 0
    conf, hit = p[kept].max(1), correct[kept]
    bins = np.linspace(0, 1, 11)
    table, ece = [], 0.0
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            acc, mc = float(hit[sel].mean()), float(conf[sel].mean())
            ece += sel.mean() * abs(acc - mc)
            table.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": int(sel.sum()), "mean_confidence": mc, "accuracy": acc})
    brier = float(np.mean(np.sum((p - np.eye(k)[y]) ** 2, axis=1)))
    by_variant: dict[str, list[int]] = {}
    for r, c in zip(rows, correct):
        by_variant.setdefault(f"{r['pattern']}/{r['variant']}", []).append(int(c))
    inv_err = [abs(r["involvement"] - r["true_involvement"]) for r in rows if r["involvement"] is not None]
    return {"n": len(rows), "accuracy": float(correct.mean()), "confusion": cm.tolist(), "per_class": per_class,
            "ece": float(ece), "brier": brier, "reliability": table,
            "per_variant_accuracy": {k2: [sum(v), len(v)] for k2, v in sorted(by_variant.items())},
            "involvement_mae_points": float(np.mean(inv_err)) if inv_err else None,
            "involvement_true_mean": float(np.mean([r["true_involvement"] for r in rows])),
            "out_of_domain": int(sum(1 for r in rows if r.get("out_of_domain")))}


def split_metrics(rows: list[dict]) -> dict:
    """Accuracy and ECE by slice thickness (thin <= 3 mm, thick > 3 mm), kernel, contrast."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        t = r.get("thickness", 0.0)
        groups.setdefault("thin (<= 3 mm)" if t <= 3.0 else "thick (5 mm)", []).append(r)
        groups.setdefault(f"kernel {r.get('kernel')}", []).append(r)
        groups.setdefault("contrast" if r.get("contrast") else "no contrast", []).append(r)
    out = {}
    for name, rs in sorted(groups.items()):
        m = metrics(rs)
        out[name] = {"n": m["n"], "accuracy": m["accuracy"], "ece": m["ece"], "out_of_domain": m["out_of_domain"]}
    return out


def markdown(m: dict) -> str:
    names = data.PATTERNS
    lines = [f"Held-out studies: {m['n']}; accuracy **{m['accuracy']:.3f}**; ECE {m['ece']:.3f} (10 bins); "
             f"refused by the domain gate {m['out_of_domain']} (counted as wrong); "
             f"Brier {m['brier']:.3f}; lung-involvement MAE {m['involvement_mae_points']:.2f} percentage points "
             f"(mean true involvement {m['involvement_true_mean']:.2f} %).", "",
             "Confusion matrix (rows: truth, columns: prediction):", "",
             "| truth \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for n, row in zip(names, m["confusion"]):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "| class | n | sensitivity | specificity |", "|---|---|---|---|"]
    for n in names:
        c = m["per_class"][n]
        lines.append(f"| {n} | {c['n']} | {c['sensitivity']:.3f} | {c['specificity']:.3f} |")
    lines += ["", "Reliability (confidence = top-class probability):", "",
              "| confidence | n | mean confidence | accuracy |", "|---|---|---|---|"]
    for r in m["reliability"]:
        lines.append(f"| {r['bin']} | {r['n']} | {r['mean_confidence']:.3f} | {r['accuracy']:.3f} |")
    if "splits" in m:
        lines += ["", "| subset | n | accuracy | ECE | refused by the gate |", "|---|---|---|---|---|"]
        for k, v in m["splits"].items():
            lines.append(f"| {k} | {v['n']} | {v['accuracy']:.3f} | {v['ece']:.3f} | {v['out_of_domain']} |")
    lines += ["", "Accuracy by phantom variant: " + ", ".join(
        f"{k} {v[0]}/{v[1]}" for k, v in m["per_variant_accuracy"].items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-pattern", type=int, default=100)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--seed0", type=int, default=EVAL_SEED0,
                    help="first seed (300000: the calibration set, training/calibrate.py)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "eval_results.json")
    args = ap.parse_args()
    jobs = [(p, args.seed0 + i) for i in range(args.per_pattern) for p in data.PATTERNS]
    t = time.time()
    with Pool(args.processes, initializer=_init) as pool:
        rows = pool.map(_one, jobs, chunksize=2)
    m = metrics(rows)
    m["splits"] = split_metrics(rows)
    m["seconds"] = time.time() - t
    m["seeds"] = [args.seed0, args.seed0 + args.per_pattern - 1]
    out = args.out
    # the temperature the rows' probabilities carry (training/calibrate.py undoes it)
    temperature = _manifest_temperature()
    out.write_text(json.dumps({"metrics": m, "rows": rows, "temperature": temperature}, indent=1))
    print(markdown(m))
    print(f"\n({len(rows)} studies in {m['seconds']:.0f} s; written to {out})")


if __name__ == "__main__":
    main()
