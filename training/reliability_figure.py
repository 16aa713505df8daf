"""Reliability diagram of the calibration (MODEL_CARD.md "Calibration"), from the rows of
training/calibrate_run.py and the temperature in training/calibration.json.

    python training/reliability_figure.py training/calibration_rows_thin.json

Kept apart from training/calibrate.py so that the fitting itself needs numpy/scipy only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from calibrate import load, reliability, softmax_t  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--calibration", default=str(HERE / "calibration.json"))
    ap.add_argument("--out", default=str(HERE.parent / "models" / "covid-typicality" / "reliability.png"))
    args = ap.parse_args()
    cal = json.loads(Path(args.calibration).read_text())
    t = float(cal["temperature"])
    lo, hi = cal["fit_seeds"]
    raw, y, seeds, _ = load(args.rows)
    test = (seeds < lo) | (seeds > hi)
    raw, y = raw[test], y[test]
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=100)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for temp, colour, name in ((1.0, "tab:red", "raw (T = 1)"), (t, "tab:blue", f"calibrated (T = {t:.2f})")):
        ece, table = reliability(softmax_t(raw, temp), y)
        conf = np.array([r["mean_confidence"] for r in table])
        acc = np.array([r["accuracy"] for r in table])
        n = np.array([r["n"] for r in table])
        ax.plot(conf, acc, marker="o", color=colour, label=f"{name}: ECE {ece:.3f}")
        for c, a, k in zip(conf, acc, n):
            ax.annotate(str(k), (c, a), textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set_xlim(0.3, 1.0)
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("confidence (top-class probability), bin mean")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"covid-typicality: held-out phantoms, n = {len(y)}\n(10 bins; labels: studies per bin)",
                 fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
