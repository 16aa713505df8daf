"""Temperature scaling of the shipped model, fitted on held-out phantoms (numpy/scipy only).

    python training/calibrate.py rows_thin.json [--fit-seeds 300000 300049] [--out calibration.json]

Input: the rows of ``training/calibrate_run.py`` (raw model output per study).  The model
exports softmax probabilities, so log(p) stands in for the logits (softmax(log p) = p);
T is the one number minimising the negative log-likelihood of softmax(log p / T) on the
fit split (seeds ``--fit-seeds``); ECE and accuracy are reported on the other seeds (the
test split) before and after, in the same 10 equal-width confidence bins as
training/evaluate.py.  Temperature scaling never changes the argmax, so accuracy is the
same before and after; it only moves the confidences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

PATTERNS = ("typical", "indeterminate", "atypical", "negative")


def softmax_t(raw: np.ndarray, t: float) -> np.ndarray:
    z = np.log(np.clip(raw, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(raw: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax_t(raw, t)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def fit_temperature(raw: np.ndarray, y: np.ndarray) -> float:
    res = minimize_scalar(lambda log_t: nll(raw, y, float(np.exp(log_t))), bounds=(np.log(0.1), np.log(10.0)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """(ECE, per-bin table); confidence = top-class probability, bins (lo, hi]."""
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece, table = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            acc, mc = float(correct[sel].mean()), float(conf[sel].mean())
            ece += float(sel.mean()) * abs(acc - mc)
            table.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": int(sel.sum()), "mean_confidence": mc, "accuracy": acc})
    return ece, table


def load(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    raw = np.array([r["raw"] for r in rows], dtype=np.float64)
    y = np.array([PATTERNS.index(r["pattern"]) for r in rows])
    seeds = np.array([r["seed"] for r in rows])
    return raw, y, seeds, rows


def summary(raw: np.ndarray, y: np.ndarray, t: float) -> dict:
    before, table_b = reliability(softmax_t(raw, 1.0), y)
    after, table_a = reliability(softmax_t(raw, t), y)
    return {"n": int(len(y)), "accuracy": float((raw.argmax(1) == y).mean()), "ece_before": before,
            "ece_after": after, "nll_before": nll(raw, y, 1.0), "nll_after": nll(raw, y, t),
            "reliability_before": table_b, "reliability_after": table_a}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--fit-seeds", type=int, nargs=2, default=(300_000, 300_049))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "calibration.json"))
    args = ap.parse_args()
    raw, y, seeds, _ = load(args.rows)
    fit = (seeds >= args.fit_seeds[0]) & (seeds <= args.fit_seeds[1])
    t = fit_temperature(raw[fit], y[fit])
    doc = {"temperature": round(t, 3), "fit_seeds": list(args.fit_seeds), "fit": summary(raw[fit], y[fit], t),
           "test": summary(raw[~fit], y[~fit], t)}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    for split in ("fit", "test"):
        s = doc[split]
        print(f"{split}: n={s['n']} accuracy={s['accuracy']:.3f} ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f} "
              f"NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}")
    print(f"T = {t:.3f} (written to {args.out})")


if __name__ == "__main__":
    main()
