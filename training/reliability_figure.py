"""Reliability diagram of the shipped model (MODEL_CARD.md "Calibration"), from the rows of
training/evaluate.py (training/eval_results.json) and training/calibration.json (the
temperature fitted by training/calibrate.py, and the one the rows were produced with).

    python training/reliability_figure.py

The model's own output is recovered from the rows: softmax(log p / T0) = q means p is
proportional to q ** T0.  Studies the domain gate refused are left out (they get no
probabilities in service).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from calibrate import PATTERNS, reliability, softmax_t  # noqa: E402

HERE = Path(__file__).resolve().parent


def _version() -> str:
    """The package version the figure belongs to (models/covid-typicality/model.toml)."""
    toml = HERE.parent / "models" / "covid-typicality" / "model.toml"
    return tomllib.loads(toml.read_text())["version"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=str(HERE / "eval_results.json"))
    ap.add_argument("--calibration", default=str(HERE / "calibration.json"))
    ap.add_argument("--out", default=str(HERE.parent / "models" / "covid-typicality" / "reliability.png"))
    args = ap.parse_args()
    cal = json.loads(Path(args.calibration).read_text())
    t, t0 = float(cal["temperature"]), float(cal["rows_temperature"])
    rows = [r for r in json.loads(Path(args.rows).read_text())["rows"] if not r.get("out_of_domain")]
    q = np.array([r["probabilities"] for r in rows], dtype=np.float64)
    y = np.array([PATTERNS.index(r["pattern"]) for r in rows])
    raw = np.clip(q, 1e-12, 1.0) ** t0
    raw /= raw.sum(axis=1, keepdims=True)
    shipped = softmax_t(raw, t)
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=100)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for p, colour, name in ((raw, "tab:red", "raw (T = 1)"), (shipped, "tab:blue", f"shipped (T = {t:.3f})")):
        ece, table = reliability(p, y)
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
    ax.set_title(f"covid-typicality {_version()}: held-out phantoms, n = {len(y)}\n(10 bins; labels: studies per bin)",
                 fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
