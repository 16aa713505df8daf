"""Export the lung-involvement quantifier: python training/export_involvement.py [weights.pt]

It reuses the segmentation part of the trained typicality network (lung and lesion maps)
and grades the involvement fraction inside the graph: P(involvement > t) is a steep
sigmoid at each grade boundary t (1, 5, 25, 50 %), and the grade probabilities are the
differences of that cumulative curve.  A separate package with its own manifest,
input/output names and selection rules: it plugs into the node without code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import data
import numpy as np
import onnx
import onnxruntime as ort
import torch
from export import with_feature_distance
from net import TypicalityNet, feature_distance
from torch import nn

sys.path.insert(0, str(data.ROOT))
from aenode.infer.manifest import file_sha256  # noqa: E402

PACKAGE = data.ROOT / "models" / "lung-involvement"
BOUNDS = (0.01, 0.05, 0.25, 0.50)
SOFTNESS = 0.004  # width of each boundary (fraction of lung)


class Involvement(nn.Module):
    """Severity grades, lesion and lung maps and, given the training features' reference
    (the same backbone as covid-typicality, so the same reference), the domain distance."""

    def __init__(self, net: TypicalityNet, mean: torch.Tensor | None = None, whiten: torch.Tensor | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("bounds", torch.tensor(BOUNDS).view(1, -1))
        self.with_distance = mean is not None and whiten is not None
        if self.with_distance:
            self.register_buffer("mean", mean.float().view(1, -1))
            self.register_buffer("whiten", whiten.float())

    def forward(self, volume: torch.Tensor):
        _logits, _seg, lesion, lung, pooled = self.net.forward_with_features(volume)
        les = (lesion > 0.5).float()
        lng = torch.maximum((lung > 0.5).float(), les)
        frac = les.sum(dim=(1, 2, 3, 4)) / lng.sum(dim=(1, 2, 3, 4)).clamp(min=1.0)
        above = torch.sigmoid((frac.view(-1, 1) - self.bounds) / SOFTNESS)  # P(f > t_k), decreasing in k
        ones = torch.ones_like(frac.view(-1, 1))
        zeros = torch.zeros_like(frac.view(-1, 1))
        cdf_hi = torch.cat([ones, above], dim=1)
        cdf_lo = torch.cat([above, zeros], dim=1)
        severity = (cdf_hi - cdf_lo).clamp(min=0.0)
        severity = severity / severity.sum(dim=1, keepdim=True)
        if self.with_distance:
            return severity, lesion, lung, feature_distance(pooled, self.mean, self.whiten)
        return severity, lesion, lung


def export(weights: Path, package: Path = PACKAGE, opset: int = 17) -> str:
    net = TypicalityNet.from_state_dict(torch.load(weights, map_location="cpu"))
    ref_path = weights.parent / "domain_ref.pt"
    domain_ref = torch.load(ref_path, map_location="cpu") if ref_path.exists() else None
    model = (Involvement(net.eval(), domain_ref["mean"], domain_ref["whiten"]) if domain_ref
             else Involvement(net.eval())).eval()
    out = package / "model.onnx"
    names = ["severity", "lesion", "lung"] + (["domain_distance"] if domain_ref else [])
    torch.onnx.export(
        model, (torch.rand(1, 1, 64, 128, 128),), str(out), input_names=["volume"],
        output_names=names, dynamic_axes={k: {0: "n"} for k in ("volume", *names)},
        opset_version=opset, dynamo=False)
    onnx.checker.check_model(onnx.load(str(out)))
    xb = torch.rand(2, 1, 64, 128, 128)
    with torch.no_grad():
        ref = [t.numpy() for t in model(xb)]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"volume": xb.numpy()})
    for r, g in zip(ref, got):
        assert np.allclose(r, g, atol=1e-4, rtol=1e-3), float(np.abs(r - g).max())
    digest = file_sha256(out)
    toml = package / "model.toml"
    text = re.sub(r'^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', toml.read_text(), flags=re.M)
    if domain_ref:
        text = with_feature_distance(text, float(domain_ref["max"]))
    toml.write_text(text)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return digest


if __name__ == "__main__":
    export(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "runs" / "best.pt")
