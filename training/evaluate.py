"""Evaluate the exported package on held-out phantom seeds (numbers for MODEL_CARD.md).

    python training/evaluate.py --per-pattern 50      # 200 studies, seeds 100000+

Each held-out volume is generated at scanner resolution (512x512 in-plane) and goes through
the node's own preprocessing and ONNX Runtime session (``aenode.infer.engine.Model``), so
this measures the shipped file, not the PyTorch weights.  Writes training/eval_results.json
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

    _model = Model(data.PACKAGE, providers=["cpu"])


def _one(job: tuple[str, int]) -> dict:
    from aenode.infer.preprocess import preprocess
    from aenode.phantom import generate_volume

    pattern, seed = job
    pv = generate_volume(pattern, seed, shape_zyx=(128, 512, 512), kernel="sharp", threads=1)
    lesion = np.isin(pv.lesion_mask, data.LESION_LABELS)
    lung = (pv.lung_mask > 0) | lesion
    true_inv = 100.0 * float(lesion.sum()) / max(1.0, float(lung.sum()))
    img = data.phantom_to_sitk(pv.hu, pv.spacing_zyx, pv.origin)
    x, grid = preprocess(img, _model.manifest.preprocessing, _model.manifest.input.size_zyx)
    pred = _model.interpret(_model.run(x), grid, timings={})
    return {"pattern": pattern, "seed": seed, "variant": pv.pattern_variant,
            "probabilities": [pred.probabilities[p] for p in data.PATTERNS],
            "predicted": pred.category, "true_involvement": true_inv, "involvement": pred.involvement_percent}


def metrics(rows: list[dict]) -> dict:
    k = len(data.PATTERNS)
    y = np.array([data.PATTERNS.index(r["pattern"]) for r in rows])
    p = np.array([r["probabilities"] for r in rows])
    yhat = p.argmax(1)
    cm = np.zeros((k, k), int)
    for a, b in zip(y, yhat):
        cm[a, b] += 1
    per_class = {}
    for i, name in enumerate(data.PATTERNS):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = cm.sum() - tp - fn - fp
        per_class[name] = {"sensitivity": tp / max(1, tp + fn), "specificity": tn / max(1, tn + fp),
                           "n": int(cm[i].sum())}
    conf = p.max(1)
    correct = (yhat == y).astype(float)
    bins = np.linspace(0, 1, 11)
    table, ece = [], 0.0
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            acc, mc = float(correct[sel].mean()), float(conf[sel].mean())
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
            "involvement_true_mean": float(np.mean([r["true_involvement"] for r in rows]))}


def markdown(m: dict) -> str:
    names = data.PATTERNS
    lines = [f"Held-out studies: {m['n']}; accuracy **{m['accuracy']:.3f}**; ECE {m['ece']:.3f} (10 bins); "
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
    lines += ["", "Accuracy by phantom variant: " + ", ".join(
        f"{k} {v[0]}/{v[1]}" for k, v in m["per_variant_accuracy"].items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-pattern", type=int, default=50)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    jobs = [(p, EVAL_SEED0 + i) for i in range(args.per_pattern) for p in data.PATTERNS]
    t = time.time()
    with Pool(args.processes, initializer=_init) as pool:
        rows = pool.map(_one, jobs, chunksize=2)
    m = metrics(rows)
    m["seconds"] = time.time() - t
    m["seeds"] = [EVAL_SEED0, EVAL_SEED0 + args.per_pattern - 1]
    out = Path(__file__).resolve().parent / "eval_results.json"
    out.write_text(json.dumps({"metrics": m, "rows": rows}, indent=1))
    print(markdown(m))
    print(f"\n({len(rows)} studies in {m['seconds']:.0f} s; written to {out})")


if __name__ == "__main__":
    main()
