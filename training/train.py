"""Train the reference COVID-19 typicality model on cached phantom samples.

    python training/build_cache.py 0 130      # 520 samples (4 patterns x 130 seeds)
    python training/train.py --epochs 14      # ~15 min on 2 CPU cores
    python training/export.py                 # ONNX + sha256 into models/covid-typicality
    python training/evaluate.py               # held-out seeds -> MODEL_CARD figures
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import data
import numpy as np
import torch
import torch.nn.functional as F
from net import TypicalityNet

# TRAIN_RUNS: another folder for a second network trained beside the first (gpu_train.sh)
RUNS = Path(os.environ.get("TRAIN_RUNS") or Path(__file__).resolve().parent / "runs")


def parse_arch(text: str) -> dict[str, int]:
    """``"c0=4,c1=12"`` -> TypicalityNet keyword arguments ("" = the default widths)."""
    return {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv.strip())}


def one_cycle(progress: float, lr: float, warm: float = 0.15) -> float:
    """Learning rate at ``progress`` (0..1) of the run: linear warm-up from lr/25, then a
    cosine down to lr/1e4.  Progress counts time as well as steps (see main), so a run cut
    by its time budget still ends annealed instead of stopping at a high rate."""
    p = min(max(progress, 0.0), 1.0)
    if p < warm:
        return lr / 25.0 + (lr - lr / 25.0) * p / warm
    q = (p - warm) / (1.0 - warm)
    return lr / 1e4 + (lr - lr / 1e4) * 0.5 * (1.0 + math.cos(math.pi * q))


def pos_weights(text: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``"nodule=20,cavity=10"`` -> a (1, C, 1, 1, 1) weight of the positive term of each
    segmentation channel's BCE (1 where not named; None for ""), see :func:`seg_loss`."""
    named = parse_arch(text)
    if not named:
        return None
    unknown = set(named) - set(data.CHANNELS)
    if unknown:
        raise SystemExit(f"--pos-weight: unknown channel(s) {', '.join(sorted(unknown))}; channels: {', '.join(data.CHANNELS)}")
    w = torch.tensor([float(named.get(c, 1)) for c in data.CHANNELS], device=device)
    return w.view(1, -1, 1, 1, 1)


def seg_loss(seg_logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE (its positive term weighted per channel by ``pos_weight``) + Dice of the channels
    present in the batch + the lung's Dice.  Why the weight: a cavity or a cluster of
    centrilobular nodules covers a few dozen of the 131,072 half-resolution voxels, and
    without it the cavity and nodule channels of 2.0.0 stayed at zero (Dice 0.00; the
    Dice term alone cannot lift a saturated sigmoid)."""
    bce = F.binary_cross_entropy_with_logits(seg_logits, target, pos_weight=pos_weight)
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


def roll_batch(t: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` of each sample by its own (dz, dy, dx) over the last three dims, as
    three gathers for the whole batch instead of one roll per sample (the per-sample loop
    kept the GPU waiting on Python)."""
    n = t.shape[0]
    for k in range(3):
        dim = t.dim() - 3 + k
        size = t.shape[dim]
        idx = (torch.arange(size, device=t.device).view(1, size) - shifts[:, k:k + 1]) % size
        view = [n] + [1] * (t.dim() - 1)
        view[dim] = size
        t = torch.gather(t, dim, idx.view(view).expand_as(t))
    return t


def augment_batch(x: torch.Tensor, seg: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment` for a batch already on the training device (N,1,D,H,W / N,C,d,h,w).

    Same shifts and jitter, done where the data lives so that a GPU is not starved by
    per-sample NumPy work.
    """
    n = x.shape[0]
    shifts = torch.randint(-2, 3, (n, 3), generator=gen).to(x.device)
    x, seg = roll_batch(x, 2 * shifts), roll_batch(seg, shifts)
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
    ap.add_argument("--hard-seeds", type=int, nargs=2, help="add the forced hard variants of these seeds (data.HARD_VARIANTS)")
    ap.add_argument("--arch", default="", help='network widths, e.g. "c0=4,c1=12,c2=24,c3=48" (net.TypicalityNet)')
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    ap.add_argument("--pos-weight", default="", help='BCE positive weight per segmentation channel, e.g. "nodule=20,cavity=10"')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", type=Path, help="continue from these weights")
    ap.add_argument("--out", default="last.pt")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget: the learning-rate schedule runs on max(step, time) progress and "
                         "training stops when either is used up (the best weights are kept)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda keeps the whole training set on the GPU (fp16) and augments there")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    hard = tuple(args.hard_seeds) if args.hard_seeds else None
    xtr, str_, ytr = data.load_arrays(data.cache_paths(*args.train_seeds, hard=hard))
    xva, sva, yva = data.load_arrays(data.cache_paths(*args.val_seeds))
    print(f"train {len(ytr)} val {len(yva)}", flush=True)
    if args.init:
        net = TypicalityNet.from_state_dict(torch.load(args.init, map_location="cpu"))
    else:
        net = TypicalityNet(n_classes=len(data.PATTERNS), n_seg=len(data.CHANNELS), **parse_arch(args.arch))
    net.to(dev)
    pos_weight = pos_weights(args.pos_weight, dev)
    amp = args.amp and dev.type == "cuda"
    on_gpu = dev.type == "cuda"
    if on_gpu:
        xtr_d = torch.from_numpy(xtr).to(dev)           # float16
        str_d = torch.from_numpy(str_).to(dev)          # uint8
        ytr_d = torch.from_numpy(ytr).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(ytr) + args.batch - 1) // args.batch)
    step = 0
    progress = 0.0
    RUNS.mkdir(parents=True, exist_ok=True)
    best = (-1.0, 1e9)
    history = []
    t0 = time.time()
    for epoch in range(args.epochs):
        if progress >= 1.0:
            break
        net.train()
        order = rng.permutation(len(ytr))
        tot = {"cls": torch.zeros((), device=dev), "seg": torch.zeros((), device=dev), "n": 0}
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
            elapsed = time.time() - t0
            progress = max(step / steps, elapsed / args.max_seconds if args.max_seconds else 0.0)
            if progress >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = one_cycle(progress, args.lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits, seg, _, _ = net(xb)
            logits, seg = logits.float(), seg.float()
            # classification weight ramps up while the segmentation learns the maps it reads
            w = 1.0 if args.init else min(1.0, 0.5 + 3.0 * progress)
            lc = F.cross_entropy(logits, yb, label_smoothing=0.05)
            ls = seg_loss(seg, sb, pos_weight)
            loss = w * lc + ls
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            tot["cls"] += lc.detach() * len(idx)  # summed on the device: no sync per step
            tot["seg"] += ls.detach() * len(idx)
            tot["n"] += len(idx)
        net.eval()
        correct, vloss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(yva), 8):
                xb = torch.from_numpy(xva[i:i + 8].astype(np.float32))[:, None].to(dev)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    logits, _, _, _ = net(xb)
                logits = logits.float().cpu()
                yb = torch.from_numpy(yva[i:i + 8])
                vloss += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        acc, vloss = correct / max(1, len(yva)), vloss / max(1, len(yva))
        rec = {"epoch": epoch, "train_cls": float(tot["cls"]) / max(1, tot["n"]),
               "train_seg": float(tot["seg"]) / max(1, tot["n"]),
               "val_acc": acc, "val_loss": vloss, "progress": round(progress, 3), "elapsed_s": round(time.time() - t0)}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        if (acc, -vloss) > (best[0], -best[1]):
            best = (acc, vloss)
            torch.save({k: v.cpu() for k, v in net.state_dict().items()}, RUNS / f"best_{Path(args.out).stem}.pt")
        if progress >= 1.0 and step < steps:
            print(f"time budget of {args.max_seconds:.0f} s reached in epoch {epoch} (step {step} of {steps})", flush=True)
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, RUNS / args.out)
    (RUNS / f"history_{Path(args.out).stem}.json").write_text(json.dumps({"history": history, "train_seconds": time.time() - t0,
                                                   "n_train": int(len(ytr)), "n_val": int(len(yva))}, indent=1))
    print(f"done in {time.time() - t0:.0f} s; best val acc {best[0]:.3f}", flush=True)


if __name__ == "__main__":
    main()
