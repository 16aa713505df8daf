"""The shipped packages' weights rebuilt from covid-typicality's ONNX file (batch norms
folded there) give that graph's outputs, and lung-involvement exported from them is the
shipped lung-involvement graph with the same domain distance.  Needs the training extra."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from aenode.infer.manifest import file_sha256, load_manifest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))


def test_rebuilt_network_gives_both_shipped_graphs(tmp_path):
    import export_involvement
    import from_onnx

    net, ref = from_onnx.rebuild(REPO / "models" / "covid-typicality")
    assert from_onnx.check(net, ref, REPO / "models" / "covid-typicality") < 1e-2
    assert ref["max"] == load_manifest(REPO / "models" / "covid-typicality").domain.feature_distance.max

    runs = tmp_path / "runs"
    runs.mkdir()
    torch.save(net.state_dict(), runs / "final.pt")
    torch.save(ref, runs / "domain_ref.pt")
    package = tmp_path / "lung-involvement"
    shutil.copytree(REPO / "models" / "lung-involvement", package)
    export_involvement.export(runs / "final.pt", package)
    manifest = load_manifest(package)        # sealed: the manifest's sha256 is the new file's
    assert manifest.sha256 == file_sha256(package / "model.onnx")
    assert manifest.domain is not None and manifest.domain.feature_distance is not None

    x = np.random.default_rng(0).random((1, 1, 64, 128, 128), dtype=np.float32)
    shipped = ort.InferenceSession(str(REPO / "models" / "lung-involvement" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    mine = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in shipped.get_outputs()]
    assert names == ["severity", "lesion", "lung", "domain_distance"]
    for name, a, b in zip(names, shipped.run(names, {"volume": x}), mine.run(names, {"volume": x})):
        assert np.allclose(a, b, atol=1e-5, rtol=1e-5), name
    covid = ort.InferenceSession(str(REPO / "models" / "covid-typicality" / "model.onnx"),
                                 providers=["CPUExecutionProvider"])
    d_covid = covid.run(["domain_distance"], {"ct": x})[0]
    d_inv = shipped.run(["domain_distance"], {"volume": x})[0]
    assert np.allclose(d_covid, d_inv, rtol=1e-4)
