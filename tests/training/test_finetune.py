"""Round trip: export -> fine-tune a few steps -> sealed package -> the node loads and runs it.
Needs the training extra (torch, onnx) on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aenode.cli import main
from aenode.infer.analyse import analyse_instances
from aenode.infer.cli import scan_folder
from aenode.infer.manifest import file_sha256, load_manifest
from aenode.infer.registry import ModelRegistry
from tests.export.conftest import NodeData, node_data  # noqa: F401

TRAINING = Path(__file__).resolve().parents[2] / "training"


def test_export_finetune_package_load_run(node_data: NodeData, tmp_path, capsys):  # noqa: F811
    cfg = tmp_path / "aenode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{node_data.data_dir}"\n[model]\npath = "{node_data.config.model.path}"\n')
    export = tmp_path / "export"
    assert main(["export", "--out", str(export), "--config", str(cfg)]) == 0
    capsys.readouterr()

    sys.path.insert(0, str(TRAINING))
    import finetune

    package = tmp_path / "models" / "covid-typicality-9.0.0"
    assert finetune.main([str(export), "--out", str(package), "--version", "9.0.0", "--steps", "3",
                          "--batch", "2"]) == 0
    record = json.loads((package / "training.json").read_text())
    assert record["studies"] == 3 and sum(record["labels"].values()) == 3     # the confirmed ones
    assert record["temperature"] > 0 and record["sha256"] == file_sha256(package / "model.onnx")
    manifest = load_manifest(package)
    assert (manifest.name, manifest.version, manifest.sha256) == ("covid-typicality", "9.0.0", record["sha256"])
    assert manifest.outputs.temperature == 1.0  # its graph is calibrated; the reference's T is not applied
    card = (package / "MODEL_CARD.md").read_text()
    assert "3 radiologist-labelled studies" in card and "not for diagnostic use" in card

    registry = ModelRegistry.load(tmp_path / "models")
    assert [m.manifest.version for m in registry] == ["9.0.0"] and not registry.failed
    study = next(p for p in (node_data.data_dir / "spool").iterdir() if p.name == "typical")
    headers, _, _ = scan_folder(study)
    analysis = analyse_instances(headers, list(registry))
    outcome = analysis.outcomes[0]
    # Three steps on three studies leave a toy model whose lung map may cover the whole grid;
    # the inherited domain gate then must refuse its answer.  What is checked: the node ran the
    # package, measured the gate's values, and its decision follows from those values.
    pred = outcome.prediction
    assert pred is not None and pred.domain is not None and pred.domain.checks, outcome.reason
    inside = all(c.value is not None and c.low <= c.value <= c.high for c in pred.domain.checks)
    assert outcome.state == ("analysed" if inside else "out-of-domain"), outcome.reason
    assert (pred.category is None) == (not inside)
    assert abs(sum(outcome.prediction.probabilities.values()) - 1.0) < 1e-4
