"""Thin vs thick (5 mm) on the same held-out phantoms (issue 12), from calibrate_run.py rows.

    python training/thick_report.py training/calibration_rows_thin.json training/calibration_rows_thick.json

Paired by (pattern, seed): accuracy of each, per class, how often the domain gate (the
ranges in model.toml) would have fired, and ECE.  numpy only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from calibrate import PATTERNS, reliability, softmax_t

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aenode.infer.manifest import load_manifest  # noqa: E402

PACKAGE = Path(__file__).resolve().parent.parent / "models" / "covid-typicality"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("thin")
    ap.add_argument("thick")
    args = ap.parse_args()
    m = load_manifest(PACKAGE)
    assert m.domain is not None and m.domain.lung_median_hu and m.domain.lung_volume_ml
    thin = {(r["pattern"], r["seed"]): r for r in json.loads(Path(args.thin).read_text())}
    thick = {(r["pattern"], r["seed"]): r for r in json.loads(Path(args.thick).read_text())}
    keys = sorted(set(thin) & set(thick))
    out = {"n_pairs": len(keys)}
    for name, rows in (("thin", thin), ("thick", thick)):
        rs = [rows[k] for k in keys]
        raw = np.array([r["raw"] for r in rs])
        y = np.array([PATTERNS.index(r["pattern"]) for r in rs])
        pred = raw.argmax(1)
        hu = np.array([r["domain"]["checks"][0]["value"] for r in rs], dtype=float)
        vol = np.array([r["domain"]["checks"][1]["value"] for r in rs], dtype=float)
        lo, hi = m.domain.lung_median_hu
        vlo, vhi = m.domain.lung_volume_ml
        fired = ~((hu >= lo) & (hu <= hi) & (vol >= vlo) & (vol <= vhi))
        wrong = pred != y
        cm = np.zeros((4, 4), int)
        for a, b in zip(y, pred):
            cm[a, b] += 1
        out[name] = {
            "accuracy": float((~wrong).mean()),
            "per_class_sensitivity": {p: float(cm[i, i] / max(1, cm[i].sum())) for i, p in enumerate(PATTERNS)},
            "confusion": cm.tolist(),
            "ece": reliability(softmax_t(raw, m.outputs.temperature), y)[0],
            "gate_fired": int(fired.sum()), "gate_fired_on_errors": int((fired & wrong).sum()),
            "errors": int(wrong.sum()),
            "lung_median_hu": [float(np.min(hu)), float(np.median(hu)), float(np.max(hu))],
            "lung_volume_ml": [float(np.min(vol)), float(np.median(vol)), float(np.max(vol))],
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
