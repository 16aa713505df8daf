"""Rebuild the trained network from a sealed covid-typicality package:
python training/from_onnx.py [models/covid-typicality] [--out runs_from_onnx]

The PyTorch weights of a shipped package live only on the machine that trained it; the
ONNX file holds all of them, with each batch norm folded into the convolution before it.
This puts them back into :class:`net.TypicalityNet` (a folded convolution's bias becomes
its batch norm's ``-running_mean``, with unit scale), writes ``final.pt`` and the domain
reference ``domain_ref.pt`` (the graph's ``mean``/``whiten`` and the manifest's limit and
ranges) into ``--out``, and checks that the rebuilt network gives the package's outputs.
So a second package can be exported from the same weights (``export_involvement.py``)
without retraining.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import data
import numpy as np
import onnx
import onnxruntime as ort
import torch
from net import Exported, TypicalityNet
from onnx import numpy_helper
from torch import nn

# The convolutions in the order of forward(): folded ones are followed by a BatchNorm3d.
CONVS = ("stem", "enc1", "down2", "enc2", "down3", "enc3.0", "enc3.1", "lat2", "dec2", "lat1", "dec1", "seg")


def _conv_and_norm(net: TypicalityNet, name: str) -> tuple[nn.Conv3d, nn.BatchNorm3d | None]:
    mod = net.get_submodule(name)
    if isinstance(mod, nn.Conv3d):
        return mod, None
    conv, norm = mod[0], mod[1]
    assert isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d), name
    return conv, norm


def rebuild(package: Path) -> tuple[TypicalityNet, dict]:
    """(network, domain reference) from ``package``'s model.onnx and model.toml."""
    model = onnx.load(str(package / "model.onnx"))
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if len(convs) != len(CONVS):
        raise SystemExit(f"{package}: {len(convs)} convolutions, expected {len(CONVS)} (another architecture?)")
    stem_w = init[convs[0].input[1]]
    n_seg, c2, c3 = (int(init[convs[i].input[1]].shape[0]) for i in (-1, 2, 4))
    peaks = TypicalityNet.peaks_of(int(init["net.cls.0.weight"].shape[1]), c2, c3, n_seg)
    net = TypicalityNet(n_classes=int(init["net.cls.3.weight"].shape[0]), n_seg=n_seg,
                        c1=int(stem_w.shape[0]), c2=c2, c3=c3, peaks=peaks)
    with torch.no_grad():
        for node, name in zip(convs, CONVS):
            conv, norm = _conv_and_norm(net, name)
            w = init[node.input[1]]
            b = init[node.input[2]] if len(node.input) > 2 else torch.zeros(w.shape[0])
            if tuple(w.shape) != tuple(conv.weight.shape):
                raise SystemExit(f"{name}: weight {tuple(w.shape)} in the graph, {tuple(conv.weight.shape)} in net.py")
            conv.weight.copy_(w)
            if norm is None:
                assert conv.bias is not None
                conv.bias.copy_(b)
            else:  # y = (x - mean) / sqrt(var + eps) * 1 + 0 = x + b
                norm.weight.fill_(1.0)
                norm.bias.zero_()
                norm.running_mean.copy_(-b)
                norm.running_var.fill_(1.0 - norm.eps)
        for key in ("cls.0.weight", "cls.0.bias", "cls.3.weight", "cls.3.bias"):
            net.get_parameter(key).copy_(init[f"net.{key}"])
    net.eval()
    manifest = tomllib.loads((package / "model.toml").read_text())
    domain = manifest.get("domain", {})
    ref = {"mean": _domain_mean(model, init).view(-1), "whiten": init["whiten"],
           "max": float(domain["feature_distance"]["max"]),
           "ranges": {k: domain[k] for k in ("lung_median_hu", "lung_volume_ml") if k in domain}}
    return net, ref


def _domain_mean(model: onnx.ModelProto, init: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training-feature mean sealed in the graph.  The exporter may fold the buffer's
    ``view(1, -1)`` into an anonymous constant (2.1.0: ``onnx::Sub_497``), so it is found
    by its place: the subtrahend of the Sub whose result is multiplied by ``whiten``."""
    if "mean" in init:
        return init["mean"]
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] == "whiten":
            sub = producers.get(node.input[0])
            if sub is not None and sub.op_type == "Sub" and sub.input[1] in init:
                return init[sub.input[1]]
    raise SystemExit("no domain reference (mean) in the graph: exported without domain_ref.pt?")


def check(net: TypicalityNet, ref: dict, package: Path) -> float:
    """Largest difference between the rebuilt network and the package's graph on two
    inputs: noise and a held-out phantom through the node's preprocessing."""
    sess = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    torch.manual_seed(0)
    sample = data.make_sample("typical", 999_999)["x"].astype(np.float32)[None, None]
    worst = 0.0
    model = Exported(net, ref["mean"], ref["whiten"]).eval()
    for x in (torch.rand(1, 1, 64, 128, 128), torch.from_numpy(sample)):
        with torch.no_grad():
            mine = [t.numpy() for t in model(x)]
        got = sess.run(names, {sess.get_inputs()[0].name: x.numpy()})
        for name, a, b in zip(names, mine, got):
            diff = float(np.abs(a - b).max())
            worst = max(worst, diff)
            if diff > 1e-3 * max(1.0, float(np.abs(b).max())):
                raise SystemExit(f"rebuilt network differs from the graph at {name}: {diff:.3g}")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("package", nargs="?", type=Path, default=data.PACKAGE)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runs_from_onnx")
    args = ap.parse_args()
    net, ref = rebuild(args.package)
    worst = check(net, ref, args.package)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out / "final.pt")
    torch.save(ref, args.out / "domain_ref.pt")
    print(f"{args.out}/final.pt and domain_ref.pt from {args.package}; largest output difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
