"""End to end: DCMTK storescu -> the node (receive, index, alert worker, outbox) -> peers.

``test_storescu_to_alerts`` runs receive + alert + delivery workers and records the result
itself (what the analysis worker does), so it does not depend on a trained model.
``test_full_pipeline`` runs every worker of ``aenode serve`` with the repository's model
packages; it is skipped until a model package ships its ONNX file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydicom import dcmread

import aenode.phantom as phantom
from aenode.config import REPO_MODELS_DIR, parse_config
from aenode.node import running_node
from tests.alert.conftest import all_channels
from tests.alert.helpers import CANARY_NAME, outbox_rows
from tests.alert.servers import free_port, wait_for

STORESCU = "/usr/bin/storescu" if Path("/usr/bin/storescu").is_file() else None  # DCMTK, not pynetdicom's
assert STORESCU is not None, "DCMTK storescu is installed by scripts/setup.sh"


def _storescu(port: int, folder: Path) -> None:
    import subprocess

    r = subprocess.run([STORESCU, "-aet", "CT01", "-aec", "AENODE", "+sd", "+r", "127.0.0.1", str(port),
                        str(folder)], capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


def _config(tmp_path: Path, alerts: dict):
    return parse_config({
        "node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": free_port(),
                 "data_dir": str(tmp_path / "data"), "name": "ic-node-e2e"},
        "stability": {"quiet_seconds": 1.0, "after_release_seconds": 0.3},
        "delivery": {"poll_seconds": 0.1, "backoff_base_seconds": 0.2, "backoff_cap_seconds": 1.0},
        "model": {"path": str(REPO_MODELS_DIR)},
        "alerts": alerts,
    })


def _primary_series(tmp_path: Path, study) -> Path:
    return tmp_path / "study" / Path(study.series[0][3]).name


def test_storescu_to_alerts(tmp_path, peers):
    wh, sm, ml = peers
    study = phantom.generate_study(tmp_path / "study", "typical", seed=5, slices=20, extra_series=False,
                                   patient_name=CANARY_NAME)
    config = _config(tmp_path, all_channels(wh, sm, ml))
    workers = ("alert", "delivery")
    uid = study.study_instance_uid
    with running_node(config, workers=workers) as node:
        _storescu(node.port, _primary_series(tmp_path, study))
        assert wait_for(lambda: (s := node.index.study(uid)) is not None and s.state == "complete", 30)
        first = dcmread(node.index.instances(uid)[0].path, stop_before_pixels=True)
        # What the analysis worker records for a Typical study.
        node.index.record_result(uid, 1, "covid-typicality", "typical",
                                 {"typical": 0.88, "indeterminate": 0.07, "atypical": 0.03, "negative": 0.02},
                                 selected_series=node.index.instances(uid)[0].series_uid,
                                 detail={"version": "1.0.0", "alerts": ["typical"]})
        assert wait_for(lambda: len(wh.accepted) and len(sm.messages) and len(ml.accepted), 30)
        # Bounded wait for "nothing more arrives": a duplicate would be decided within one
        # alert poll (0.25 s) and sent on the delivery worker's wake-up; 0.5 s covers both.
        time.sleep(0.5)
    assert len(wh.accepted) == len(sm.messages) == len(ml.messages) == 1
    body = json.loads(wh.accepted[0]["body"])
    assert body["category"] == "typical" and body["study"]["study_instance_uid"] == uid
    assert body["patient"] == {"id": str(first.PatientID)}
    assert body["study"]["accession_number"] == str(first.AccessionNumber)
    assert body["study"]["station_name"] == "PHCT01"
    assert body["category_code"]["code_value"] == "AEN0001"
    assert "CANARY" not in wh.accepted[0]["body"].decode() and "CANARY" not in ml.messages[0]["text"]
    assert "CANARY" not in sm.messages[0]["raw"].decode()
    assert all(r.state == "sent" for r in outbox_rows(config))


def test_full_pipeline(tmp_path, peers):
    assert (REPO_MODELS_DIR / "covid-typicality" / "model.onnx").is_file()
    wh, sm, ml = peers
    study = phantom.generate_study(tmp_path / "study", "typical", seed=11, extra_series=False)
    config = _config(tmp_path, all_channels(wh, sm, ml))
    uid = study.study_instance_uid
    with running_node(config) as node:
        _storescu(node.port, _primary_series(tmp_path, study))
        assert wait_for(lambda: (s := node.index.study(uid)) is not None and s.state in
                        ("analysed", "skipped", "error"), 240)
        results = [r for r in node.index.results(uid) if r.model == "covid-typicality"]
        assert results, node.index.study(uid)
        alerting = "typical" in ((results[-1].detail or {}).get("alerts") or [])
        if alerting:
            assert wait_for(lambda: len(wh.accepted) and len(sm.messages) and len(ml.accepted), 30)
        # Bounded wait for "nothing more arrives" (or, for a non-alerting result, "nothing
        # arrives"): 1 s is four alert polls plus a delivery, so an alert would be here.
        time.sleep(1.0)
    expected = 1 if alerting else 0
    assert len(wh.accepted) == len(sm.messages) == len(ml.accepted) == expected
