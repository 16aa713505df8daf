"""Refit the classification head of a trained network on a CPU, keeping its domain reference:

    python training/refit_head.py RUN_DIR --train LO HI [--hard LO HI] --val LO HI [--out DIR]

``RUN_DIR`` holds ``final.pt`` and ``domain_ref.pt`` from a GPU run (``gpu_pair.sh pick``
copies them out as ``final_a.pt`` / ``domain_ref_a.pt``: rename them into a folder).  Why
this exists beside ``fit_head.py``: covid-typicality 2.1.0's head was refit by these steps, on the
2-core VM, after the GPU run's refit had over-fitted and its device time was spent; only
part of the training cache was on the VM, so the domain reference must stay the one
measured on all training samples on the GPU machine (the head does not change the
features it measures), while ``fit_head.py`` recomputes it from the samples it is given.

Features are computed as ``fit_head.py`` computes them (each training sample plain and
once shifted/jittered; validation plain) and kept in ``DIR/features_*.pt``, so a second
run only refits.  Every random draw is seeded, so the same command on the same cache and
weights gives the same head.  Writes ``DIR/final.pt`` (the network with the kept
head), ``DIR/domain_ref.pt`` (copied) and ``DIR/calibration_fit.json`` (a first
temperature from the validation samples; the shipped one comes from calibrate.py), which
``export.py DIR/final.pt`` seals into the package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import data
import torch
from calibrate import fit_temperature
from fit_head import confusion, feats, refit, scores
from net import TypicalityNet


def features(state: dict[str, torch.Tensor], paths: list[Path], aug: bool, cache: Path) -> dict:
    """Plain (and, with ``aug``, shifted/jittered) features of ``paths``, kept in ``cache``.
    The global generator is seeded before the network is built: the jitter's noise is
    drawn from it (train.augment_batch), so every run draws the same."""
    if cache.exists():
        kept = torch.load(cache)
        if kept["paths"] == [p.name for p in paths]:
            return kept
    torch.manual_seed(0)
    net = TypicalityNet.from_state_dict(state).eval()
    t = time.time()
    xs, segs, ys = data.load_arrays(paths)
    gen = torch.Generator().manual_seed(1)
    out = {"f": feats(net, xs, segs, gen, False), "y": torch.from_numpy(ys), "paths": [p.name for p in paths]}
    if aug:
        out["f_aug"] = feats(net, xs, segs, gen, True)
    torch.save(out, cache)
    print(f"features of {len(paths)} samples in {time.time() - t:.0f} s -> {cache}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="folder with final.pt and domain_ref.pt")
    ap.add_argument("--train", type=int, nargs=2, required=True, metavar=("LO", "HI"))
    ap.add_argument("--hard", type=int, nargs=2, metavar=("LO", "HI"), help="forced hard variants (data.HARD_VARIANTS)")
    ap.add_argument("--val", type=int, nargs=2, required=True, metavar=("LO", "HI"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runs_refit")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in ("final.pt", "domain_ref.pt"):
        if not (args.run / name).exists():
            raise SystemExit(f"{args.run}: no {name} (a training run's folder is expected)")
    args.out.mkdir(parents=True, exist_ok=True)
    state = torch.load(args.run / "final.pt", map_location="cpu")

    train_paths = data.cache_paths(*args.train, hard=tuple(args.hard) if args.hard else None)
    val_paths = data.cache_paths(*args.val)
    if not train_paths or not val_paths:
        raise SystemExit(f"no cached samples for those seeds in {data.CACHE} (build_cache.py first)")
    tr = features(state, train_paths, True, args.out / "features_train.pt")
    va = features(state, val_paths, False, args.out / "features_val.pt")
    ftr = torch.cat([tr["f"], tr["f_aug"]])
    ytr = torch.cat([tr["y"], tr["y"]])
    mu, sd = ftr.mean(0), ftr.std(0).clamp(min=1e-3)
    torch.manual_seed(0)  # then the network built again: the refit's random start is fixed
    net = TypicalityNet.from_state_dict(state).eval()
    net.cls.load_state_dict(refit(net, ftr, ytr, va["f"], va["y"], mu, sd))
    torch.save(net.state_dict(), args.out / "final.pt")
    shutil.copy(args.run / "domain_ref.pt", args.out / "domain_ref.pt")

    with torch.no_grad():
        logits = net.cls(va["f"])
    acc, val_loss = scores(net.cls, va["f"], va["y"])
    ref = torch.load(args.run / "domain_ref.pt")
    info = {"temperature": round(fit_temperature(torch.softmax(logits.double(), 1).numpy(), va["y"].numpy()), 3),
            "domain_distance_max": round(float(ref["max"]), 2), "ranges": ref.get("ranges"),
            "n_train": int(len(tr["y"])), "n_val": int(len(va["y"])), "val_acc": acc,
            "val_loss": round(val_loss, 4),
            "head": f"refit_head.py: train {args.train}, hard {args.hard}, validation {args.val}; "
                    f"domain reference kept from {args.run}"}
    (args.out / "calibration_fit.json").write_text(json.dumps(info, indent=1))
    print("val confusion (rows truth):", confusion(va["y"].numpy(), logits.argmax(1).numpy()))
    print(f"{args.out}/final.pt written; validation accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
