"""Agreement of a model with the radiologists: the figures of a local validation report.

Hand-written on purpose: each is a few lines of arithmetic (confusion matrix, Wilson
interval, Cohen's kappa, expected calibration error), and writing them here keeps
scikit-learn/statsmodels out of the node's dependencies.  Each is checked against
hand-computed values in ``tests/evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054   # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Case:
    """One study: the radiologist's label, the model's answer and what describes the scan."""

    key: str
    truth: str
    predicted: str | None                 # None: the model gave no category (skipped, error)
    probabilities: dict[str, float]
    out_of_domain: bool = False
    scanner_model: str = ""
    slice_thickness_mm: float | None = None
    seconds: float = 0.0


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (good at small n and at 0 or 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def confusion(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> list[list[int]]:
    """Rows: the radiologists' class; columns: the model's; in ``classes`` order."""
    at = {c: i for i, c in enumerate(classes)}
    m = [[0] * len(classes) for _ in classes]
    for t, p in zip(truth, predicted):
        m[at[t]][at[p]] += 1
    return m


def kappa(matrix: list[list[int]], weights: str = "none") -> float:
    """Cohen's kappa; ``weights`` "linear" for ordered classes (1 - |i-j|/(k-1))."""
    k = len(matrix)
    n = sum(map(sum, matrix))
    if n == 0 or k < 2:
        return float("nan")

    def w(i: int, j: int) -> float:
        if weights == "linear":
            return 1 - abs(i - j) / (k - 1)
        return 1.0 if i == j else 0.0

    rows = [sum(r) / n for r in matrix]
    cols = [sum(matrix[i][j] for i in range(k)) / n for j in range(k)]
    observed = sum(w(i, j) * matrix[i][j] / n for i in range(k) for j in range(k))
    expected = sum(w(i, j) * rows[i] * cols[j] for i in range(k) for j in range(k))
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def calibration(cases: Sequence[Case], bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-class probability, and the reliability bins
    (mean confidence, accuracy, count) for the diagram."""
    rows: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for c in cases:
        if c.predicted is None or not c.probabilities:
            continue
        conf = max(c.probabilities.values())
        rows[min(int(conf * bins), bins - 1)].append((conf, c.predicted == c.truth))
    n = sum(len(r) for r in rows)
    ece = 0.0
    out = []
    for i, r in enumerate(rows):
        if not r:
            out.append({"lo": i / bins, "hi": (i + 1) / bins, "confidence": float("nan"), "accuracy": float("nan"),
                        "n": 0})
            continue
        conf = sum(x for x, _ in r) / len(r)
        acc = sum(ok for _, ok in r) / len(r)
        ece += len(r) / n * abs(acc - conf)
        out.append({"lo": i / bins, "hi": (i + 1) / bins, "confidence": conf, "accuracy": acc, "n": len(r)})
    return (ece if n else float("nan")), out


def summarise(cases: Sequence[Case], classes: Sequence[str]) -> dict[str, object]:
    """Every figure of the report for ``cases`` (JSON-ready)."""
    scored = [c for c in cases if c.predicted is not None]
    truth = [c.truth for c in scored]
    pred = [c.predicted or "" for c in scored]
    m = confusion(truth, pred, classes)
    n = len(scored)
    correct = sum(m[i][i] for i in range(len(classes)))
    per_class = {}
    for i, name in enumerate(classes):
        tp = m[i][i]
        fn = sum(m[i]) - tp
        fp = sum(m[r][i] for r in range(len(classes))) - tp
        tn = n - tp - fn - fp
        sens_ci = wilson(tp, tp + fn)
        spec_ci = wilson(tn, tn + fp)
        per_class[name] = {
            "n": tp + fn,
            "sensitivity": tp / (tp + fn) if tp + fn else None, "sensitivity_ci95": list(sens_ci),
            "specificity": tn / (tn + fp) if tn + fp else None, "specificity_ci95": list(spec_ci),
        }
    ece, bins = calibration(scored)
    acc_ci = wilson(correct, n)
    return {
        "n": n,
        "not_scored": len(cases) - n,
        "classes": list(classes),
        "confusion": m,
        "accuracy": correct / n if n else None,
        "accuracy_ci95": list(acc_ci),
        "kappa": _num(kappa(m)),
        "kappa_linear": _num(kappa(m, "linear")),
        "ece": _num(ece),
        "reliability": [{k: _num(v) for k, v in b.items()} for b in bins],
        "per_class": per_class,
        "out_of_domain_rate": sum(c.out_of_domain for c in cases) / len(cases) if cases else 0.0,
    }


def _num(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def split(cases: Sequence[Case], classes: Sequence[str]) -> dict[str, dict[str, dict[str, object]]]:
    """The headline figures per scanner model and per slice-thickness group."""
    def groups(key: str) -> dict[str, list[Case]]:
        out: dict[str, list[Case]] = {}
        for c in cases:
            if key == "scanner_model":
                g = c.scanner_model or "unknown"
            else:
                t = c.slice_thickness_mm
                g = "unknown" if t is None else ("<= 1.5 mm" if t <= 1.5 else "1.5-3 mm" if t <= 3.0 else "> 3 mm")
            out.setdefault(g, []).append(c)
        return out

    result: dict[str, dict[str, dict[str, object]]] = {}
    for key in ("scanner_model", "slice_thickness"):
        result[key] = {}
        for g, members in sorted(groups(key).items()):
            s = summarise(members, classes)
            result[key][g] = {k: s[k] for k in ("n", "accuracy", "kappa", "kappa_linear", "ece", "out_of_domain_rate")}
    return result
