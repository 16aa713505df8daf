"""Calibration measures shared by the training scripts (numpy only).

The shipped temperature is fitted in ``training/fit_head.py`` on the held-out validation
seeds (negative log-likelihood of softmax(logits / T)); ``training/evaluate.py`` and
``training/reliability_figure.py`` measure the result on the separate evaluation seeds
with :func:`reliability` (10 equal-width bins of the top-class probability).  The model
exports softmax probabilities, so log(p) stands in for the logits (softmax(log p) = p);
temperature scaling never changes the argmax.
"""

from __future__ import annotations

import numpy as np

PATTERNS = ("typical", "indeterminate", "atypical", "negative")


def softmax_t(raw: np.ndarray, t: float) -> np.ndarray:
    z = np.log(np.clip(raw, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(raw: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax_t(raw, t)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


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
