"""Train the reference COVID-19 typicality model on cached phantom samples.

    python training/build_cache.py 0 130      # 520 samples (4 patterns x 130 seeds)
    python training/train.py --epochs 14      # ~15 min on 2 CPU cores
    python training/export.py                 # ONNX + sha256 into models/covid-typicality
    python training/evaluate.py               # held-out seeds -> MODEL_CARD figures
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import data
import numpy as np
import torch
import torch.nn.functional as F
from net import TypicalityNet

RUNS = Path(__file__).resolve().parent / "runs"


def seg_loss(seg_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(seg_logits, target)
    p = torch.sigmoid(seg_logits[:, 1:])
    t = target[:, 1:]
    inter = (p * t).sum(dim=(0, 2, 3, 4))
    denom = p.sum(dim=(0, 2, 3, 4)) + t.sum(dim=(0, 2, 3, 4))
    present = t.sum(dim=(0, 2, 3, 4)) > 1.0
    dice = 1 - (2 * inter + 1.0) / (denom + 1.0)
    dice = (dice * present).sum() / present.sum().clamp(min=1)
    lung_p = torch.sigmoid(seg_logits[:, :1])
    lung_dice = 1 - (2 * (lung_p * target[:, :1]).sum() + 1) / (lung_p.sum() + target[:, :1].sum() + 1)
    return 10.0 * bce + dice + lung_dice


def augment_batch(x: torch.Tensor, seg: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment` for a batch already on the training device (N,1,D,H,W / N,C,d,h,w).

    Same shifts and jitter, done where the data lives so that a GPU is not starved by
    per-sample NumPy work.
    """
    n = x.shape[0]
    shifts = torch.randint(-2, 3, (n, 3), generator=gen).tolist()
    xs, ss = [], []
    for i, (dz, dy, dx) in enumerate(shifts):
        xs.append(torch.roll(x[i], (2 * dz, 2 * dy, 2 * dx), dims=(1, 2, 3)))
        ss.append(torch.roll(seg[i], (dz, dy, dx), dims=(1, 2, 3)))
    x, seg = torch.stack(xs), torch.stack(ss)
    u = torch.rand((n, 4), generator=gen).to(x.device)
    scale = (0.97 + 0.06 * u[:, 0]).view(n, 1, 1, 1, 1)
    offset = (-0.02 + 0.04 * u[:, 1]).view(n, 1, 1, 1, 1)
    sigma = (0.015 * u[:, 2]).view(n, 1, 1, 1, 1)
    x = x * scale + offset + torch.randn_like(x) * sigma
    return x, seg


def augment(x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Small shifts (in whole half-resolution voxels) and intensity/noise jitter."""
    dz, dy, dx = (int(v) for v in rng.integers(-2, 3, 3))
    x = np.roll(x, (2 * dz, 2 * dy, 2 * dx), axis=(0, 1, 2))
    seg = np.roll(seg, (dz, dy, dx), axis=(1, 2, 3))
    x = x * rng.uniform(0.97, 1.03) + rng.uniform(-0.02, 0.02)
    x = x + rng.normal(0, rng.uniform(0, 0.015), x.shape).astype(np.float32)
    return x.astype(np.float32), seg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-seeds", type=int, nargs=2, default=[0, 120])
    ap.add_argument("--val-seeds", type=int, nargs=2, default=[120, 130])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", type=Path, help="continue from these weights")
    ap.add_argument("--out", default="last.pt")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop after the epoch that passes this budget (the best weights are kept)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda keeps the whole training set on the GPU (fp16) and augments there")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def paths(lo, hi):
        return [data.CACHE / f"{p}_{s}.npz" for s in range(lo, hi) for p in data.PATTERNS
                if (data.CACHE / f"{p}_{s}.npz").exists()]

    xtr, str_, ytr = data.load_arrays(paths(*args.train_seeds))
    xva, sva, yva = data.load_arrays(paths(*args.val_seeds))
    print(f"train {len(ytr)} val {len(yva)}", flush=True)
    net = TypicalityNet(n_classes=len(data.PATTERNS), n_seg=len(data.CHANNELS))
    if args.init:
        net.load_state_dict(torch.load(args.init, map_location="cpu"))
    net.to(dev)
    on_gpu = dev.type == "cuda"
    if on_gpu:
        xtr_d = torch.from_numpy(xtr).to(dev)           # float16
        str_d = torch.from_numpy(str_).to(dev)          # uint8
        ytr_d = torch.from_numpy(ytr).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(ytr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    RUNS.mkdir(exist_ok=True)
    best = (-1.0, 1e9)
    history = []
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(ytr))
        tot = {"cls": 0.0, "seg": 0.0, "n": 0}
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            if on_gpu:
                ti = torch.from_numpy(idx).to(dev)
                xb, sb = augment_batch(xtr_d[ti].float()[:, None], str_d[ti].float() / 255.0, gen)
                yb = ytr_d[ti]
            else:
                xb, sb = zip(*(augment(xtr[j].astype(np.float32), str_[j], rng) for j in idx))
                xb = torch.from_numpy(np.stack(xb))[:, None]
                sb = torch.from_numpy(np.stack(sb).astype(np.float32) / 255.0)
                yb = torch.from_numpy(ytr[idx])
            logits, seg, _, _ = net(xb)
            # classification weight ramps up while the segmentation learns the maps it reads
            w = 1.0 if args.init else min(1.0, 0.5 + epoch / max(1, args.epochs // 3))
            lc = F.cross_entropy(logits, yb, label_smoothing=0.05)
            ls = seg_loss(seg, sb)
            loss = w * lc + ls
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot["cls"] += lc.item() * len(idx)
            tot["seg"] += ls.item() * len(idx)
            tot["n"] += len(idx)
        net.eval()
        correct, vloss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(yva), 8):
                xb = torch.from_numpy(xva[i:i + 8].astype(np.float32))[:, None].to(dev)
                logits, _, _, _ = net(xb)
                logits = logits.cpu()
                yb = torch.from_numpy(yva[i:i + 8])
                vloss += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        acc, vloss = correct / max(1, len(yva)), vloss / max(1, len(yva))
        rec = {"epoch": epoch, "train_cls": tot["cls"] / tot["n"], "train_seg": tot["seg"] / tot["n"],
               "val_acc": acc, "val_loss": vloss, "elapsed_s": round(time.time() - t0)}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        if (acc, -vloss) > (best[0], -best[1]):
            best = (acc, vloss)
            torch.save({k: v.cpu() for k, v in net.state_dict().items()}, RUNS / f"best_{Path(args.out).stem}.pt")
        if args.max_seconds is not None and time.time() - t0 > args.max_seconds:
            print(f"time budget of {args.max_seconds:.0f} s reached after epoch {epoch}", flush=True)
            break
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, RUNS / args.out)
    (RUNS / f"history_{Path(args.out).stem}.json").write_text(json.dumps({"history": history, "train_seconds": time.time() - t0,
                                                   "n_train": int(len(ytr)), "n_val": int(len(yva))}, indent=1))
    print(f"done in {time.time() - t0:.0f} s; best val acc {best[0]:.3f}", flush=True)


if __name__ == "__main__":
    main()
