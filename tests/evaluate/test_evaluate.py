"""``aenode evaluate`` on phantom studies with known labels: a plain folder + CSV, and an export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from aenode.cli import main
from aenode.store.datadir import DataDir
from tests.export.conftest import NodeData, node_data  # noqa: F401 - the shared fixture


def _config(node: NodeData, tmp_path: Path) -> Path:
    f = tmp_path / "aenode.toml"
    f.write_text(f'[node]\ndata_dir = "{node.data_dir}"\n[model]\npath = "{node.config.model.path}"\n')
    return f


def test_evaluate_folder_with_labels_csv(node_data, tmp_path, capsys):  # noqa: F811
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_instance_uid", "category"])
        for uid, pattern in node_data.studies.items():
            w.writerow([uid, pattern])
    report = tmp_path / "report"
    code = main(["evaluate", str(node_data.data_dir / "spool"), "--labels", str(labels), "--json",
                 "--report", str(report), "--config", str(_config(node_data, tmp_path))])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"accuracy", "kappa", "ece", "confusion", "n"} <= set(doc)
    assert doc["n"] == 4 and sum(map(sum, doc["confusion"])) == 4
    assert doc["accuracy"] == sum(doc["confusion"][i][i] for i in range(4)) / 4
    assert doc["out_of_domain_rate"] == 0.0
    assert set(doc["per_class"]) == {"typical", "indeterminate", "atypical", "negative"}
    assert doc["split"]["slice_thickness"]["1.5-3 mm"]["n"] == 4
    assert doc["split"]["scanner_model"] and doc["seconds_per_study"] > 0
    for name in ("confusion.png", "reliability.png"):
        with Image.open(report / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    page = (report / "report.html").read_text()
    assert "Cohen" in page and "confusion.png" in page and "not for diagnostic use" in page
    assert json.loads((report / "report.json").read_text())["n"] == 4
    latest = json.loads(DataDir.of(node_data.data_dir).latest_report.read_text())   # what the dashboard links
    assert latest["n"] == 4 and Path(doc["published"]).name == latest["name"]
    assert (Path(doc["published"]) / "report.html").is_file()


def test_evaluate_an_export(node_data, tmp_path, capsys):  # noqa: F811
    cfg = _config(node_data, tmp_path)
    out = tmp_path / "ds"
    assert main(["export", "--out", str(out), "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 3 and doc["unlabelled"] == 1       # the unconfirmed study has no label
    assert main(["evaluate", str(out), "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "kappa" in text and "ECE" in text


def test_evaluate_refuses_bad_labels(node_data, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "bad.csv"
    bad.write_text("study_instance_uid,category\n1.2.3,pneumothorax\n")
    cfg = _config(node_data, tmp_path)
    assert main(["evaluate", str(node_data.data_dir / "spool"), "--labels", str(bad), "--config", str(cfg)]) == 2
    assert "pneumothorax" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nowhere"), "--config", str(cfg)]) == 2
