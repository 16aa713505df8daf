"""Export the trained network to ONNX and seal the package: python training/export.py [weights.pt]"""

from __future__ import annotations

import json
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
    net = TypicalityNet.from_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    ref_path = weights.parent / "domain_ref.pt"
    domain_ref = torch.load(ref_path, map_location="cpu") if ref_path.exists() else None
    model = (Exported(net, domain_ref["mean"], domain_ref["whiten"]) if domain_ref else Exported(net)).eval()
    x = torch.rand(1, 1, 64, 128, 128)
    out = package / "model.onnx"
    names = ["probabilities", "lesion_map", "lung_map"] + (["domain_distance"] if domain_ref else [])
    torch.onnx.export(
        model, (x,), str(out), input_names=["ct"], output_names=names,
        dynamic_axes={n: {0: "batch"} for n in ["ct", *names]},
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
        assert np.allclose(r, g, atol=1e-4, rtol=1e-3), (r.shape, float(np.abs(r - g).max()), float(np.abs(r).max()))
    digest = file_sha256(out)
    toml = package / "model.toml"
    text = re.sub(r'^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', toml.read_text(), flags=re.M)
    cal_path = weights.parent / "calibration_fit.json"
    if cal_path.exists():
        t = json.loads(cal_path.read_text())["temperature"]
        text = re.sub(r"^temperature = [0-9.]+", f"temperature = {t}", text, flags=re.M)
    if domain_ref and "ranges" in domain_ref:
        for key, (lo, hi) in domain_ref["ranges"].items():
            text = re.sub(rf"^{key} = \[[^\]]*\]", f"{key} = [{float(lo):.1f}, {float(hi):.1f}]", text,
                          count=1, flags=re.M)
    if domain_ref:
        text = with_feature_distance(text, float(domain_ref["max"]))
    toml.write_text(text)
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return digest


def with_feature_distance(text: str, limit: float) -> str:
    """The manifest text with ``[domain] feature_distance`` (output ``domain_distance``)
    set to ``limit``: replaced where present, else added after ``lung_volume_ml``."""
    line = f'feature_distance = {{ output = "domain_distance", max = {limit:.2f} }}'
    if re.search(r"^feature_distance = .*$", text, flags=re.M):
        return re.sub(r"^feature_distance = .*$", line, text, flags=re.M)
    return re.sub(r"^(lung_volume_ml = .*)$", lambda mm: mm.group(1) + "\n" + line, text, count=1, flags=re.M)


if __name__ == "__main__":
    w = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "runs" / "best.pt"
    export(w, data.PACKAGE)
