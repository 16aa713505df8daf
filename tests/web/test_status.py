"""``aenode status`` shows the delivery state (outbox) and the alert state per channel."""

from __future__ import annotations

import json
import subprocess
import sys

from aenode.alert.store import AlertStore
from aenode.config import REPO_MODELS_DIR
from aenode.deliver.outbox import Outbox
from aenode.store.index import Index
from tests.web.conftest import ACCESSION, PATIENT_ID, free_port, seed_study


def test_status_shows_delivery_and_alert_state(tmp_path):
    data_dir = tmp_path / "data"
    uid, _, _ = seed_study(data_dir)
    other, _, _ = seed_study(data_dir, category="negative")
    toml = tmp_path / "node.toml"
    toml.write_text(f"""
[node]
data_dir = "{data_dir}"
[model]
path = "{REPO_MODELS_DIR}"
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {free_port()}
[alerts.webhook]
url = "http://127.0.0.1:{free_port()}/hook"
insecure = true
""")
    from aenode.alert.worker import AlertWorker
    from aenode.config import load_config

    config = load_config(toml)
    sr = next((data_dir / "results" / uid).rglob("sr.dcm"))
    with Outbox.for_config(config) as box:
        sent = box.enqueue("dicom", "pacs", "1.2.3.1", str(sr), study_uid=uid)
        box.enqueue("dicom", "pacs", "1.2.3.2", str(sr), study_uid=uid)
        box.mark_sent(sent)
    index = Index.for_data_dir(data_dir)
    try:
        worker = AlertWorker(config, index)
        worker.run_once()
        worker.close()
    finally:
        index.close()
    store = AlertStore.for_data_dir(data_dir)
    try:  # the Typical study alerts on the webhook, the Negative one does not
        assert [(a.study_uid, a.category) for a in store.alerts() if a.channel == "webhook"] == [(uid, "typical")]
    finally:
        store.close()
    with Outbox.for_config(config) as box:
        (row,) = box.rows(kind="webhook")
        box.mark_failed_attempt(row.id, "HTTP 503 from receiver", permanent=True)

    r = subprocess.run([sys.executable, "-m", "aenode", "status", "--config", str(toml), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {s["study_uid"]: s for s in json.loads(r.stdout)["studies"]}
    d = rows[uid]["delivery"]
    assert d["pacs"]["state"] == "pending" and d["pacs"]["counts"] == {"sent": 1, "pending": 1}
    assert d["webhook:webhook"]["state"] == "failed"
    a = rows[uid]["alert"]["webhook"]
    assert a["state"] == "failed" and a["category"] == "typical" and a["last_error"] == "HTTP 503 from receiver"
    assert rows[other]["delivery"] is None and rows[other]["alert"] is None

    table = subprocess.run([sys.executable, "-m", "aenode", "status", "--config", str(toml)],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(uid))
    assert "pacs=pending,webhook:webhook=failed" in line and "webhook=failed" in line
    for text in (r.stdout, table.stdout, r.stderr, table.stderr):
        assert PATIENT_ID not in text and ACCESSION not in text and "CANARY" not in text
