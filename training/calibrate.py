"""Temperature scaling fitted on a held-out calibration set at scanner resolution.

    python training/evaluate.py --seed0 300000 --per-pattern 50 --out calibration_rows.json
    python training/calibrate.py calibration_rows.json eval_results.json --write

``fit_head.py`` gives a first temperature from the validation samples, which are generated
at training resolution; the shipped one is fitted here, on studies generated like the
evaluation's (512 x 512, own acquisition each) but on seeds of their own (300000+), and
measured on the evaluation rows (10 equal-width bins of the top-class probability).  Rows
hold the probabilities the node reported with the manifest's temperature T0; the model's
own output is recovered as p ~ q ** T0.  The model exports softmax probabilities, so
log(p) stands in for the logits (softmax(log p) = p); temperature scaling never changes
the argmax.  ``--write`` puts T into models/covid-typicality/model.toml (the ONNX file and
its sha256 do not change).  Studies the domain gate refused are left out.
"""

from __future__ import annotations

import argparse
import json
import re
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


def fit_temperature(raw: np.ndarray, y: np.ndarray) -> float:
    res = minimize_scalar(lambda log_t: nll(raw, y, float(np.exp(log_t))), bounds=(np.log(0.1), np.log(10.0)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def raw_rows(path: Path, t0: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(model output, labels, the rows' temperature) of the rows the gate let through, their
    temperature undone (the one recorded in the file, else ``t0``)."""
    doc = json.loads(path.read_text())
    t0 = float(doc.get("temperature", t0))
    rows = [r for r in doc["rows"] if not r.get("out_of_domain")]
    q = np.clip(np.array([r["probabilities"] for r in rows], dtype=np.float64), 1e-12, 1.0) ** t0
    return q / q.sum(axis=1, keepdims=True), np.array([PATTERNS.index(r["pattern"]) for r in rows]), t0


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser()
    ap.add_argument("calibration_rows", type=Path)
    ap.add_argument("evaluation_rows", type=Path)
    ap.add_argument("--manifest", type=Path, default=here.parent / "models" / "covid-typicality" / "model.toml")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    text = args.manifest.read_text()
    found = re.search(r"(?m)^temperature = ([0-9.]+)", text)
    t0 = float(found.group(1)) if found else 1.0
    raw_c, y_c, t_rows = raw_rows(args.calibration_rows, t0)
    raw_e, y_e, _ = raw_rows(args.evaluation_rows, t0)
    t = fit_temperature(raw_c, y_c)
    doc = {"temperature": round(t, 3), "rows_temperature": t_rows, "calibration_studies": int(len(y_c)),
           "evaluation_studies": int(len(y_e))}
    for name, raw, y in (("calibration", raw_c, y_c), ("evaluation", raw_e, y_e)):
        for label, temp in (("raw", 1.0), ("fitted", t)):
            doc[f"{name}_ece_{label}"] = round(reliability(softmax_t(raw, temp), y)[0], 4)
            doc[f"{name}_nll_{label}"] = round(nll(raw, y, temp), 4)
    print(json.dumps(doc, indent=1))
    if args.write:
        text = re.sub(r"(?m)^temperature = [0-9.]+( *)", lambda m: f"temperature = {round(t, 3)}{m.group(1)}",
                      text, count=1)
        args.manifest.write_text(text)
        (here / "calibration.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"temperature {round(t, 3)} written to {args.manifest}")


if __name__ == "__main__":
    main()
