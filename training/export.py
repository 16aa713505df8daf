"""Export the trained network to ONNX and seal the package: python training/export.py [weights.pt]"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import data
import numpy as np
import onnx
import onnxruntime as ort
import torch
from net import Exported, TypicalityNet

sys.path.insert(0, str(data.ROOT))
from aenode.infer.manifest import file_sha256  # noqa: E402


def export(weights: Path, package: Path, opset: int = 17) -> str:
    net = TypicalityNet(n_classes=len(data.PATTERNS), n_seg=len(data.CHANNELS))
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    model = Exported(net).eval()
    x = torch.rand(1, 1, 64, 128, 128)
    out = package / "model.onnx"
    torch.onnx.export(
        model, (x,), str(out), input_names=["ct"], output_names=["probabilities", "lesion_map", "lung_map"],
        dynamic_axes={"ct": {0: "batch"}, "probabilities": {0: "batch"}, "lesion_map": {0: "batch"},
                      "lung_map": {0: "batch"}},
        opset_version=opset, dynamo=False)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    # fold everything into one file (no external data), small
    onnx.save_model(m, str(out))
    # numerical check against torch, batch 2 (dynamic axis)
    xb = torch.rand(2, 1, 64, 128, 128)
    with torch.no_grad():
        ref = [t.numpy() for t in model(xb)]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"ct": xb.numpy()})
    for r, g in zip(ref, got):
        assert np.allclose(r, g, atol=1e-4), float(np.abs(r - g).max())
    digest = file_sha256(out)
    toml = package / "model.toml"
    text = re.sub(r'^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', toml.read_text(), flags=re.M)
    toml.write_text(text)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return digest


if __name__ == "__main__":
    w = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "runs" / "best.pt"
    export(w, data.PACKAGE)
