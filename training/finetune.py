"""Fine-tune (or train) the reference network on a dataset in the export layout and write a
sealed model package the node loads unchanged.

    python training/finetune.py EXPORT_DIR --out models/covid-typicality-1.1.0 --version 1.1.0 \
        [--init runs/final.pt] [--train head|all] [--steps 200] [--batch 2] [--lr 1e-3]

Labels: the radiologists' ``category`` column of ``labels.csv`` (studies without one are
left out).  Inputs go through the node's own selection, loading and preprocessing (the
reference package's manifest), so training sees exactly what the node will feed the model.

Steps: train (classification loss; with ``--init`` the shipped architecture's weights are
the start and by default only the classification head moves, which is what a few hundred
local studies can support), fit calibration (one temperature on the training logits,
folded into the exported softmax), record the domain (range of the inputs' lung density
and intensity statistics, ``training.json``; the package keeps the reference's image-level
domain checks and drops its feature-distance check, see ``export_package``),
evaluate on the training studies, export ONNX, check it against torch, seal the sha256
into ``model.toml`` and write a model card stub with the dataset's counts.

The shipped weights' PyTorch checkpoint is not in the repository (``runs/`` is ignored):
without ``--init`` the network starts from random weights (the round-trip test does that).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from net import TypicalityNet  # noqa: E402

from aenode.infer.cli import scan_folder  # noqa: E402
from aenode.infer.engine import Model  # noqa: E402
from aenode.infer.manifest import file_sha256  # noqa: E402
from aenode.load.volume import LoadError, load_series  # noqa: E402
from aenode.select.rules import select_series  # noqa: E402

REFERENCE = ROOT / "models" / "covid-typicality"
N_SEG = 10   # segmentation channels of the reference architecture (training/data.py CHANNELS)


class Calibrated(nn.Module):
    """The exported graph: probabilities (temperature-scaled), lesion map, lung map."""

    def __init__(self, net: TypicalityNet, temperature: float):
        super().__init__()
        self.net = net
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature))

    def forward(self, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, _seg, lesion, lung = self.net(ct)
        return torch.softmax(logits * self.inv_t, dim=1), lesion, lung


def read_labelled(export_dir: Path, classes: list[str]) -> dict[str, str]:
    """Study key -> radiologist's category, from the export's labels.csv."""
    out = {}
    with (export_dir / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            cat = (row.get("category") or "").strip().lower()
            if cat in classes:
                out[row["study_instance_uid"]] = cat
    return out


def load_inputs(export_dir: Path, labels: dict[str, str], reference: Model) -> tuple[np.ndarray, list[str], list[str]]:
    """The model input of every labelled study (the node's own preprocessing)."""
    xs, ys, keys = [], [], []
    for key in sorted(labels):
        folder = export_dir / key
        if not folder.is_dir():
            continue
        headers, _, _ = scan_folder(folder)
        sel = select_series(headers, reference.manifest.selection)
        if sel.selected is None:
            print(f"skipped {key}: {sel.reason}", file=sys.stderr)
            continue
        try:
            vol = load_series(list(sel.selected.instances), tilt=reference.manifest.selection.tilt,
                              max_tilt_deg=reference.manifest.selection.max_tilt_deg)
        except LoadError as exc:
            print(f"skipped {key}: {exc.reason}", file=sys.stderr)
            continue
        x, _grid = reference.prepare(vol)
        xs.append(np.asarray(x, dtype=np.float32).reshape(reference.manifest.input.size_zyx))
        ys.append(labels[key])
        keys.append(key)
    if not xs:
        raise SystemExit(f"{export_dir}: no labelled study could be loaded")
    return np.stack(xs)[:, None], ys, keys


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """One temperature minimising the negative log-likelihood (Guo et al. 2017)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=50)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().clamp(0.05, 20.0))


def export_package(model: nn.Module, out: Path, name: str, version: str, input_shape: tuple[int, ...]) -> str:
    """ONNX + the reference manifest with this name, version and sha256."""
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    x = torch.rand(1, *input_shape[1:])
    torch.onnx.export(model, (x,), str(onnx_path), input_names=["ct"],
                      output_names=["probabilities", "lesion_map", "lung_map"],
                      dynamic_axes={k: {0: "batch"} for k in ("ct", "probabilities", "lesion_map", "lung_map")},
                      opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"ct": x.numpy()})
    for r, g in zip(ref, got):
        assert np.allclose(r, g, atol=1e-4), f"ONNX differs from torch by {float(np.abs(r - g).max())}"
    digest = file_sha256(onnx_path)
    text = (REFERENCE / "model.toml").read_text()
    text = re.sub(r'(?m)^name = ".*"', f'name = "{name}"', text, count=1)
    text = re.sub(r'(?m)^version = ".*"', f'version = "{version}"', text, count=1)
    text = re.sub(r'(?m)^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', text, count=1)
    # This graph carries its own fitted temperature: the reference's must not apply on top.
    text = re.sub(r'(?m)^temperature = [0-9.]+', "temperature = 1.0", text, count=1)
    # The reference's feature-distance check measures distance from the *phantom* training
    # features and needs the reference graph's distance output, which this graph does not
    # have: drop it (the image-level checks stay).  A fine-tuned model's own feature
    # reference would need more studies than a fine-tuning set usually has (98 features).
    text = re.sub(r'(?m)^feature_distance = .*\n', "", text, count=1)
    (out / "model.toml").write_text(text)
    return digest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="package folder to write (e.g. models/NAME-VERSION)")
    p.add_argument("--name", default="covid-typicality")
    p.add_argument("--version", required=True)
    p.add_argument("--init", type=Path, help="start from these weights (a training/train.py checkpoint)")
    p.add_argument("--train", choices=("head", "all"), default="head")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    reference = Model(REFERENCE, providers=["cpu"])
    classes = [c.name for c in reference.manifest.outputs.classes]
    labels = read_labelled(args.export_dir, classes)
    x_np, y_names, keys = load_inputs(args.export_dir, labels, reference)
    x = torch.from_numpy(x_np)
    y = torch.tensor([classes.index(c) for c in y_names])
    print(f"{len(keys)} labelled studies: {dict(Counter(y_names))}", file=sys.stderr)

    if args.init:
        net = TypicalityNet.from_state_dict(torch.load(args.init, map_location="cpu"))
    else:
        net = TypicalityNet(n_classes=len(classes), n_seg=N_SEG)
    params = list(net.cls.parameters()) if (args.train == "head" and args.init) else list(net.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    net.train()
    losses = []
    for step in range(args.steps):
        idx = rng.choice(len(y), size=min(args.batch, len(y)), replace=False)
        logits, _seg, _les, _lung = net(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f}", file=sys.stderr)

    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(x[i:i + 1])[0] for i in range(len(y))])
    temperature = fit_temperature(logits, y)
    with torch.no_grad():
        probs = torch.softmax(logits / temperature, dim=1)
    accuracy = float((probs.argmax(1) == y).float().mean())
    flat = x_np.reshape(len(y), -1)
    domain = {"input_mean": [float(flat.mean(1).min()), float(flat.mean(1).max())],
              "input_std": [float(flat.std(1).min()), float(flat.std(1).max())]}

    if args.out.exists():
        shutil.rmtree(args.out)
    digest = export_package(Calibrated(net, temperature).eval(), args.out, args.name, args.version, tuple(x.shape))
    dataset = json.loads((args.export_dir / "dataset.json").read_text()) if (args.export_dir / "dataset.json").is_file() else {}
    record = {"name": args.name, "version": args.version, "sha256": digest, "studies": len(y),
              "labels": dict(Counter(y_names)), "init": str(args.init) if args.init else None, "train": args.train,
              "steps": args.steps, "final_loss": losses[-1] if losses else None, "temperature": temperature,
              "training_accuracy": accuracy, "domain": domain, "dataset_counts": dataset.get("counts"),
              "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(Counter(y_names).items()))
    (args.out / "MODEL_CARD.md").write_text(f"""# {args.name} {args.version} (fine-tuned; model card stub)

Decision support only, not for diagnostic use.  Not validated: run `aenode evaluate` on
this hospital's labelled studies and `[models.{args.name}] mode = "shadow"` before promoting it.

- Base: {args.init or 'random initialisation'} ({args.train} trained), {args.steps} steps, batch {args.batch}, lr {args.lr}
- Training data: {len(y)} radiologist-labelled studies from a de-identified export ({counts});
  export counts: {json.dumps(dataset.get('counts', {}), sort_keys=True)}
- Calibration: temperature {temperature:.3f} (fitted on the training studies)
- Training-set accuracy (not a validation figure): {accuracy:.3f}
- ONNX sha256: {digest}
""")
    print(f"wrote {args.out} (sha256 {digest[:12]}..., {record['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
