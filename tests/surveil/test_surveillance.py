"""Surveillance over a known batch: records, trends, an EARS signal delivered once to a
real webhook receiver, revisions and confirmations, the three reports (CSV, FHIR
MeasureReport validated with fhir.resources, JRS CSV) and the CLI; the canary patient
name, ID, birth date and accession never appear in records, reports or the database."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fhir.resources.R4B.measurereport import MeasureReport

from aenode.deliver.outbox import Outbox
from aenode.deliver.worker import DeliveryWorker
from aenode.peers import wait_for
from aenode.peers.webhook import WebhookServer
from aenode.store.datadir import DataDir
from aenode.store.index import Index
from aenode.surveil.reports import CSV_COLUMNS, JRS_COLUMNS, fhir_measure_report, jrs_csv, records_csv
from aenode.surveil.store import SurveillanceStore
from aenode.surveil.trends import daily, shares, weekly
from aenode.surveil.worker import SurveillanceWorker
from tests.surveil.helpers import (
    ACCESSION,
    CANARY_BIRTH,
    CANARY_ID,
    CANARY_NAME,
    MODEL,
    Case,
    add_study,
    batch,
    config,
    record_result,
)

CANARIES = (CANARY_NAME, "CANARY", CANARY_ID, CANARY_BIRTH, ACCESSION)


def _no_canary(text: str) -> None:
    for c in CANARIES:
        assert c not in text, f"{c!r} leaked"


def aenode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "aenode", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_batch_records_trends_signal_reports(tmp_path):
    hook = WebhookServer().start()
    try:
        cfg = config(tmp_path / "data", alerts={"webhook": {"url": hook.url, "insecure": True}})
        index = Index.for_data_dir(cfg.node.data_dir)
        uids = [add_study(index, cfg.node.data_dir, c) for c in batch()]
        # a result of another model never makes a record
        index.record_result(uids[0], 1, "lung-involvement", "mild", {"mild": 1.0})
        outbox = Outbox.for_config(cfg)
        worker = SurveillanceWorker(cfg, index, outbox=outbox)
        delivery = DeliveryWorker(cfg, outbox=outbox)
        assert worker.run_once() == len(uids)
        assert wait_for(lambda: (delivery.run_once(), len(hook.accepted))[1] >= 1, 15)

        recs = worker.store.records()
        assert len(recs) == 41 and {r.model for r in recs} == {MODEL}
        week12 = [r for r in recs if r.week == "2024-W12"]
        assert sorted((r.category, r.sex, r.age_band) for r in week12) == sorted([
            ("typical", "F", "40-49"), ("typical", "F", "40-49"), ("typical", "M", "70-79"),
            ("typical", "M", "80-89"), ("indeterminate", "F", "20-29"), ("indeterminate", "O", "0-9"),
            ("atypical", "F", "60-69"), ("negative", "U", None)])
        bil = [r for r in week12 if r.findings.laterality == "bilateral"]
        assert len(bil) == 4 and all(r.findings.distribution == "peripheral" for r in bil)
        assert all(r.site_name == "Test General Hospital" and r.postal_code == "113-8655" for r in recs)
        assert {r.scanner for r in recs} == {"ACME CT-64"}

        weeks = weekly(recs)
        assert [w.period for w in weeks] == [f"2024-W{i:02d}" for i in range(1, 13)]
        assert [w.by_category["typical"] + w.by_category["indeterminate"] for w in weeks] == [1] * 11 + [6]
        assert weeks[-1].total == 8
        days = daily(recs)
        assert days[0].period == "2024-01-01" and days[0].by_category["typical"] == 1
        by_sex = shares(recs, ["typical", "indeterminate"], "sex")
        assert by_sex["F"] == (3, 11 + 4) and by_sex["M"] == (11 + 2, 11 * 2 + 2)

        # exactly one signal (2024-W12, EARS C2), sent once to the webhook, no patient data
        sigs = worker.store.signals()
        assert [(s.week, s.method, s.count) for s in sigs] == [("2024-W12", "C2", 6)]
        assert sigs[0].statistic == 5.0
        body = hook.json(0)
        assert body["kind"] == "surveillance_signal" and body["week"] == "2024-W12" and body["count"] == 6
        assert body["site"]["postal_code"] == "113-8655"
        _no_canary(json.dumps(body))
        for _ in range(3):                      # further passes and a restart: no new signal
            worker.run_once()
            worker.detect()
            delivery.run_once()
        worker2 = SurveillanceWorker(cfg, index, outbox=outbox)
        worker2.detect()
        worker2.run_once()
        delivery.run_once()
        time.sleep(0.3)
        assert len(hook.accepted) == 1
        assert [r.kind for r in outbox.rows()] == ["webhook"]

        # a revised result replaces the record; a late older revision does not
        target = uids[-1]                       # week 12 negative
        record_result(index, target, None, Case(batch()[-1].date, "typical"), revision=2)
        record_result(index, target, None, Case(batch()[-1].date, "atypical"), revision=1)
        worker.run_once()
        recs = worker.store.records()
        assert len(recs) == 41
        assert sum(r.category == "negative" for r in recs if r.week == "2024-W12") == 0
        assert sum(r.category == "typical" for r in recs if r.week == "2024-W12") == 5

        # a radiologist's confirmation (as the web stage records it) joins its record
        worker.store.record_confirmation(uids[-4], MODEL, "indeterminate", "pcr-positive", "JP-RAD-12345")
        worker.store.record_confirmation(uids[-2], MODEL, "negative", "pcr-negative", "JP-RAD-12345")
        recs = worker.store.records("2024-03-18", "2024-03-24")
        assert len(recs) == 8
        confirmed = [r for r in recs if r.confirmed_category]
        assert sorted((r.confirmed_category, r.infection_status) for r in confirmed) == \
            [("indeterminate", "pcr-positive"), ("negative", "pcr-negative")]

        # reports
        text = records_csv(recs)
        rows = list(csv.DictReader(io.StringIO(text)))
        assert tuple(next(csv.reader(io.StringIO(text)))) == CSV_COLUMNS and len(rows) == 8
        jrs = jrs_csv(recs)
        jrows = list(csv.reader(io.StringIO(jrs)))
        assert tuple(jrows[0]) == JRS_COLUMNS and len(jrows) == 3
        jd = [dict(zip(JRS_COLUMNS, r)) for r in jrows[1:]]
        pos = next(r for r in jd if r["covid19_status"] == "positive")
        assert pos["unilateral"] == "1" and pos["bilateral"] == "0" and pos["no_significant_findings"] == "0"
        assert pos["postal_code"] == "113-8655" and pos["radiologist_licence_number"] == "JP-RAD-12345"
        assert pos["age"] == "20-29" and pos["ct_date"] == "2024-03-21" and pos["ground_glass_opacity"] == ""
        neg = next(r for r in jd if r["covid19_status"] == "negative")
        assert neg["no_significant_findings"] == "1" and neg["bilateral"] == ""
        fhir = fhir_measure_report(cfg, recs, "2024-03-18", "2024-03-24", created=time.time())
        mr = MeasureReport.model_validate(fhir)
        assert mr.status == "complete" and mr.type == "summary" and str(mr.period.start) == "2024-03-18"
        assert mr.group[0].population[0].count == 8
        strata = {s.value.text: s.population[0].count for s in mr.group[0].stratifier[0].stratum}
        assert strata == {"typical": 5, "indeterminate": 2, "atypical": 1}
        assert mr.group[1].population[0].count == 2
        assert mr.subject.identifier.value == "113-8655"
        for t in (text, jrs, json.dumps(fhir)):
            _no_canary(t)

        # the CLI writes the same reports
        cfg_file = tmp_path / "aenode.toml"
        cfg_file.write_text(f'[node]\ndata_dir = "{cfg.node.data_dir}"\n[site]\nname = "Test General Hospital"\n'
                            'postal_code = "113-8655"\nprefecture = "Tokyo"\n')
        out = tmp_path / "r.json"
        assert aenode("surveillance", "report", "--from", "2024-03-18", "--until", "2024-03-24", "--format",
                      "fhir", "--out", str(out), "--config", str(cfg_file)).returncode == 0
        MeasureReport.model_validate_json(out.read_text())
        assert json.loads(out.read_text())["group"][0]["population"][0]["count"] == 8
        r = aenode("surveillance", "report", "--format", "jrs", "--config", str(cfg_file))
        assert r.returncode == 0, r.stderr
        got = r.stdout
        assert got.splitlines()[0] == ",".join(JRS_COLUMNS) and len(got.splitlines()) == 3
        worker.close()
        outbox.close()
        index.close()
        # nothing identifying in the surveillance database file itself
        raw = DataDir.of(cfg.node.data_dir).surveillance_db.read_bytes()
        for c in CANARIES:
            assert c.encode() not in raw
        for u in uids:
            assert u.encode() not in raw
    finally:
        hook.stop()


def test_bad_dates_are_refused(tmp_path):
    r = aenode("surveillance", "report", "--format", "csv", "--from", "2024-13-01")
    assert r.returncode == 2 and "expected a date YYYY-MM-DD" in r.stderr


def test_store_survives_reopen(tmp_path):
    cfg = config(tmp_path / "data")
    index = Index.for_data_dir(cfg.node.data_dir)
    add_study(index, cfg.node.data_dir, batch()[0])
    w = SurveillanceWorker(cfg, index)
    assert w.run_once() == 1 and w.run_once() == 0
    w.close()
    with SurveillanceStore.for_data_dir(cfg.node.data_dir) as s:
        assert s.cursor() >= 1 and len(s.records()) == 1
        s.check()
    index.close()


def test_periodic_fhir_push(tmp_path):
    """``[surveillance.submit]``: the MeasureReport goes through the outbox to a real HTTP
    endpoint, once per interval, as valid FHIR with no patient data."""
    endpoint = WebhookServer().start()
    try:
        cfg = config(tmp_path / "data", surveillance={"submit": {"url": endpoint.url, "insecure": True,
                                                                  "interval_hours": 24, "period_days": 7,
                                                                  "token": "submit-token-1"}})
        index = Index.for_data_dir(cfg.node.data_dir)
        today = dt.date.today()
        for i in range(6):                      # within the last 7 days, one 10 days ago (outside)
            add_study(index, cfg.node.data_dir, Case(today - dt.timedelta(days=i), "typical"))
        add_study(index, cfg.node.data_dir, Case(today - dt.timedelta(days=10), "typical"))
        outbox = Outbox.for_config(cfg)
        worker = SurveillanceWorker(cfg, index, outbox=outbox)
        delivery = DeliveryWorker(cfg, outbox=outbox)
        worker.run_once()
        assert wait_for(lambda: (delivery.run_once(), len(endpoint.accepted))[1] >= 1, 15)
        worker.run_once()
        delivery.run_once()
        time.sleep(0.2)
        assert len(endpoint.accepted) == 1
        req = endpoint.accepted[0]
        assert req["headers"]["Content-Type"] == "application/fhir+json"
        assert req["headers"]["Authorization"] == "Bearer submit-token-1"
        mr = MeasureReport.model_validate_json(req["body"])
        assert mr.group[0].population[0].count == 6
        _no_canary(req["body"].decode())
        assert [r.state for r in outbox.rows(kind="surveillance_fhir")] == ["sent"]
        worker.close()
        outbox.close()
        index.close()
    finally:
        endpoint.stop()
