"""Safe roll-out: several versions installed side by side, ``aenode models list | promote``,
and shadow mode (results recorded, nothing sent to PACS, no alerts)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from aenode.alert.worker import AlertWorker
from aenode.cli import main
from aenode.config import parse_config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import OutboxPublisher
from aenode.infer.promotions import Promotions
from aenode.infer.registry import ModelRegistry
from aenode.infer.worker import AnalysisWorker
from aenode.store.index import Index
from tests.export.conftest import MODELS_DIR, NodeData, ingest, node_data  # noqa: F401


def _two_versions(root: Path) -> Path:
    """The shipped package twice, labelled 2.0.0 and 2.1.0 whatever its own version is."""
    models = root / "models"
    for folder, version in (("covid-typicality", "2.0.0"), ("covid-typicality-2.1.0", "2.1.0")):
        shutil.copytree(MODELS_DIR / "covid-typicality", models / folder)
        toml = models / folder / "model.toml"
        text, n = re.subn(r'(?m)^version = "[^"]*"', f'version = "{version}"', toml.read_text(), count=1)
        assert n == 1
        toml.write_text(text)
    return models


def test_list_and_promote_with_rollback(tmp_path, capsys):
    models = _two_versions(tmp_path)
    cfg = tmp_path / "aenode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[model]\npath = "{models}"\n')

    def listed() -> dict[str, dict]:
        assert main(["models", "list", "--json", "--config", str(cfg)]) == 0
        doc = json.loads(capsys.readouterr().out)
        return {f"{m['name']}@{m['version']}": m for m in doc["models"]}

    got = listed()
    assert set(got) == {"covid-typicality@2.0.0", "covid-typicality@2.1.0"}
    assert got["covid-typicality@2.1.0"]["active"] and not got["covid-typicality@2.0.0"]["active"]  # highest
    assert got["covid-typicality@2.1.0"]["mode"] == "active"

    assert main(["models", "promote", "covid-typicality@2.0.0", "--config", str(cfg)]) == 0
    assert "was" not in capsys.readouterr().out.split(";")[0]
    assert listed()["covid-typicality@2.0.0"]["active"]
    config = parse_config({"node": {"data_dir": str(tmp_path / "data")}, "model": {"path": str(models)}})
    registry = ModelRegistry.from_config(config)
    assert [m.manifest.version for m in registry] == ["2.0.0"] and not registry.failed

    assert main(["models", "promote", "covid-typicality@2.1.0", "--config", str(cfg)]) == 0   # and back
    assert "(was 2.0.0)" in capsys.readouterr().out
    log = Promotions.for_data_dir(tmp_path / "data").log("covid-typicality")
    assert [(p.version, p.previous) for p in log] == [("2.0.0", None), ("2.1.0", "2.0.0")]
    assert all(p.user for p in log)

    assert main(["models", "promote", "covid-typicality@9.9.9", "--config", str(cfg)]) == 2
    assert "not installed" in capsys.readouterr().err
    assert main(["models", "promote", "covid-typicality", "--config", str(cfg)]) == 2
    (models / "covid-typicality" / "model.onnx").write_bytes(b"broken")
    assert main(["models", "promote", "covid-typicality@2.0.0", "--config", str(cfg)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_mode_off_is_not_loaded(tmp_path):
    config = parse_config({"node": {"data_dir": str(tmp_path)}, "model": {"path": str(MODELS_DIR)},
                           "models": {"lung-involvement": {"mode": "off"}}})
    assert [m.name for m in ModelRegistry.from_config(config)] == ["covid-typicality"]


def test_shadow_results_recorded_but_not_sent_or_alerted(node_data: NodeData, tmp_path):  # noqa: F811
    data_dir = tmp_path / "data"
    config = parse_config({
        "node": {"data_dir": str(data_dir)}, "model": {"path": str(MODELS_DIR)},
        "models": {"covid-typicality": {"mode": "shadow"}},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 11112}],
        "alerts": {"webhook": {"url": "http://127.0.0.1:9/hook", "insecure": True}},
    })
    typical = next(p for p in (node_data.data_dir / "spool").iterdir() if p.name == "typical")
    index = Index.for_data_dir(data_dir)
    study_uid = ingest(index, typical, data_dir / "spool")
    outbox = Outbox.for_config(config)
    worker = AnalysisWorker(config, index, ModelRegistry.from_config(config), OutboxPublisher(config, outbox))
    claim = index.claim_next_complete("test")
    assert worker.process(claim.study_uid, claim.revision) == "analysed"
    results = {r.model: r for r in index.results(study_uid)}
    shadow, active = results["covid-typicality"], results["lung-involvement"]
    assert shadow.category == "typical"          # would alert if it were active (manifest: alert = true)
    assert shadow.detail["mode"] == "shadow" and shadow.detail["result_uids"] == []
    assert active.detail["mode"] == "active" and len(active.detail["result_uids"]) == 2
    rows = outbox.rows(study_uid=study_uid)
    assert len(rows) == 2 and {r.object_id for r in rows} == set(active.detail["result_uids"])

    alerts = AlertWorker(config, index, outbox=outbox)
    assert alerts.decide_new() == 0               # no webhook alert for the shadow model
    dashboard = alerts.store.current_alert(study_uid, "covid-typicality")
    assert dashboard is not None and dashboard.alerting is False
    assert alerts.store.alerts(study_uid, channel="webhook") == []
    assert [r.kind for r in outbox.rows(study_uid=study_uid)] == ["dicom", "dicom"]
    alerts.close()
    outbox.close()
    index.close()


def test_candidate_version_in_shadow_beside_the_active_one(node_data: NodeData, tmp_path, capsys):  # noqa: F811
    models = _two_versions(tmp_path)        # 2.1.0 active (highest), 2.0.0 the candidate here
    data_dir = tmp_path / "data"
    raw = {"node": {"data_dir": str(data_dir)}, "model": {"path": str(models)},
           "models": {"covid-typicality@2.0.0": {"mode": "shadow"}},
           "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 11112}],
           "alerts": {"webhook": {"url": "http://127.0.0.1:9/hook", "insecure": True}}}
    config = parse_config(raw)
    registry = ModelRegistry.from_config(config)
    assert sorted((m.name, m.manifest.version) for m in registry) == [
        ("covid-typicality", "2.1.0"), ("covid-typicality@2.0.0", "2.0.0")]
    typical = next(p for p in (node_data.data_dir / "spool").iterdir() if p.name == "typical")
    index = Index.for_data_dir(data_dir)
    study_uid = ingest(index, typical, data_dir / "spool")
    outbox = Outbox.for_config(config)
    worker = AnalysisWorker(config, index, registry, OutboxPublisher(config, outbox))
    claim = index.claim_next_complete("test")
    assert worker.process(claim.study_uid, claim.revision) == "analysed"
    results = {r.model: r for r in index.results(study_uid)}
    assert results["covid-typicality"].detail["mode"] == "active"
    assert results["covid-typicality@2.0.0"].detail["mode"] == "shadow"
    assert results["covid-typicality@2.0.0"].detail["result_uids"] == []
    assert results["covid-typicality@2.0.0"].category == results["covid-typicality"].category == "typical"
    assert {r.object_id for r in outbox.rows(study_uid=study_uid)} == set(results["covid-typicality"].detail["result_uids"])
    alerts = AlertWorker(config, index, outbox=outbox)
    assert alerts.decide_new() == 1          # the active version alerts on the webhook, the candidate does not
    assert [a.model for a in alerts.store.alerts(study_uid, channel="webhook")] == ["covid-typicality"]
    alerts.close()
    outbox.close()
    index.close()

    cfg = tmp_path / "aenode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data_dir}"\n[model]\npath = "{models}"\n'
                   '[models."covid-typicality@2.0.0"]\nmode = "shadow"\n')
    assert main(["models", "list", "--json", "--config", str(cfg)]) == 0
    listed = {f"{m['name']}@{m['version']}": m["mode"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert listed == {"covid-typicality@2.0.0": "shadow", "covid-typicality@2.1.0": "active"}
