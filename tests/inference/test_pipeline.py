"""End to end on generated DICOM studies: accuracy, predict CLI, the analysis worker."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import pydicom
import pytest

from aenode.cli import main
from aenode.config import Config
from aenode.infer.analyse import analyse_instances
from aenode.infer.cli import scan_folder
from aenode.infer.worker import AnalysisWorker
from aenode.store.index import Index
from aenode.store.meta import InstanceHeader, read_meta
from tests.inference.conftest import PATTERNS, PER_PATTERN_SLOW, _generate


def _classify(studies, models) -> list[tuple[str, str]]:
    covid = [m for m in models if m.name == "covid-typicality"]
    out = []
    for pattern, _seed, d in studies:
        infos, corrupt, _ = scan_folder(d)
        assert not corrupt
        a = analyse_instances(infos, covid)
        assert a.state == "analysed", a.reason
        out.append((pattern, a.outcomes[0].prediction.category))
    return out


def _check_accuracy(results: list[tuple[str, str]]) -> None:
    """The model card (2.0.0): 0.900 over 400 held-out studies, the alerting classes
    (typical, indeterminate) 0.99 each, the errors atypical vs negative.  A sample of 20
    studies moves by about +-0.07, so: every alerting study right, and at least 0.8."""
    alerting = [(p, c) for p, c in results if p in ("typical", "indeterminate")]
    assert all(p == c for p, c in alerting), results
    assert sum(p == c for p, c in results) / len(results) >= 0.8, results
    assert {p for p, _ in results} == set(PATTERNS)


def test_heldout_accuracy(heldout_studies, models):
    _check_accuracy(_classify(heldout_studies, models))


@pytest.mark.slow
def test_heldout_accuracy_large(tmp_path, models):
    _check_accuracy(_classify(_generate(tmp_path, PER_PATTERN_SLOW), models))


def _run_cli(args, capsys) -> tuple[int, str]:
    code = main(["predict", *args])
    return code, capsys.readouterr().out


def test_predict_cli_json(heldout_studies, capsys):
    pattern, _seed, d = next(s for s in heldout_studies if s[0] == "typical")  # has the extra series
    code, out = _run_cli([str(d), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["state"] == "analysed"
    covid = next(m for m in doc["models"] if m["model"] == "covid-typicality")
    assert covid["category"] == "typical"
    assert set(covid["probabilities"]) == set(PATTERNS)
    assert covid["selection"]["selected"]["slice_thickness_mm"] == 2.5
    reasons = " | ".join(s["reason"] for s in covid["selection"]["skipped"])
    # 0.5-5 mm are eligible since 2.0.0; the thinner series is preferred over the 5 mm one
    assert "localizer" in reasons and "SOP class" in reasons
    assert "eligible, but series AXIAL 2.5mm LUNG is preferred" in reasons
    assert covid["involvement_percent"] > 0
    inv = next(m for m in doc["models"] if m["model"] == "lung-involvement")
    assert inv["state"] == "analysed"
    code, out = _run_cli([str(d)], capsys)
    assert code == 0 and "category: typical" in out and "skipped series" in out


def test_predict_cli_errors(heldout_studies, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty)]) == 2
    assert "no DICOM files" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing")]) == 2
    capsys.readouterr()

    # only a localizer and a dose report: skipped, with the reasons
    src = next(s for s in heldout_studies if s[0] == "negative")[2]
    only = tmp_path / "only"
    for sub in ("001_localizer", "997_dose_report"):
        shutil.copytree(src / sub, only / sub)
    code, out = _run_cli([str(only), "--json", "--model", "covid-typicality"], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["state"] == "skipped"
    assert "localizer" in doc["reason"] and "SOP class" in doc["reason"]
    # the 5 mm series alone is analysed (trained on 0.6-5 mm since 2.0.0)
    thick = tmp_path / "thick"
    shutil.copytree(src / "003_axial_thick", thick / "t")
    code, out = _run_cli([str(thick), "--json", "--model", "covid-typicality"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["state"] == "analysed"
    assert doc["models"][0]["selection"]["selected"]["slice_thickness_mm"] == 5.0

    # a corrupt file in the analysed series: error with the file named, exit 1
    bad = tmp_path / "bad"
    shutil.copytree(src / "002_axial_thin", bad / "thin")
    victim = sorted((bad / "thin").iterdir())[40]
    victim.write_bytes(victim.read_bytes()[:2000])
    code, out = _run_cli([str(bad), "--json"], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["state"] == "error"
    assert f"file {victim.name}: pixel data truncated" in doc["reason"]
    # a file that is not even a readable DICOM header
    victim.write_bytes(victim.read_bytes()[:300])
    code, out = _run_cli([str(bad), "--json"], capsys)
    assert code == 1 and "corrupt DICOM file" in json.loads(out)["reason"] and victim.name in out


class FakeIndex:
    """The store's hand-off contract, in memory (the real Index is tested below)."""

    def __init__(self, studies: dict[str, list[InstanceHeader]]):
        self.queue = [(uid, 1) for uid in studies]
        self.rows = studies
        self.finished: dict[str, tuple[str, str | None]] = {}
        self.results: list[tuple] = []

    def renew_lease(self, study_uid, revision, worker, seconds):
        return any(q[0] == study_uid for q in self.queue)

    def claim_next_complete(self, worker, lease_seconds=None):
        from types import SimpleNamespace

        return SimpleNamespace(study_uid=self.queue[0][0], revision=1) if self.queue else None

    def instances(self, study_uid):
        return self.rows[study_uid]

    def finish_study(self, study_uid, revision, state, reason=None):
        self.queue = [q for q in self.queue if q[0] != study_uid]
        self.finished[study_uid] = (state, reason)
        return True

    def record_result(self, study_uid, revision, model, category, probabilities=None, selected_series=None,
                      involvement=None, detail=None):
        self.results.append((study_uid, model, category, probabilities, selected_series, involvement, detail))
        return len(self.results)


def _rows(folder: Path) -> list[InstanceHeader]:
    return [dataclasses.replace(read_meta(f), calling_ae="CT1") for f in sorted(folder.rglob("*.dcm"))]


def test_worker_flows_and_survives_corrupt_series(heldout_studies, models, tmp_path):
    good = next(s for s in heldout_studies if s[0] == "typical")[2]
    src = next(s for s in heldout_studies if s[0] == "atypical")[2]
    bad = tmp_path / "bad"
    shutil.copytree(src / "002_axial_thin", bad)
    victim = sorted(bad.iterdir())[30]
    ds = pydicom.dcmread(victim)
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) - 50_000])  # truncated pixel data
    thick_only = tmp_path / "thick"
    shutil.copytree(good / "003_axial_thick", thick_only / "t")
    shutil.copytree(good / "001_localizer", thick_only / "l")
    index = FakeIndex({"good": _rows(good), "bad": _rows(bad), "thick": _rows(thick_only)})
    worker = AnalysisWorker(Config(), index, models, None)
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop,))
    t.start()
    for _ in range(600):
        if len(index.finished) == 3:
            break
        stop.wait(0.1)
    stop.set()
    t.join(10)
    assert index.finished["good"][0] == "analysed"
    state, reason = index.finished["bad"]
    assert state == "error" and victim.name in reason and "pixel data" in reason
    state, reason = index.finished["thick"]
    # both models accept the 5 mm series (0.5-5 mm since 2.0.0)
    assert state == "analysed"
    by_study = {(r[0], r[1]): r for r in index.results}
    assert by_study[("good", "covid-typicality")][2] == "typical"
    assert ("thick", "covid-typicality") in by_study and ("thick", "lung-involvement") in by_study
    assert ds.SOPInstanceUID  # the victim was a real instance


def test_worker_with_store_index(heldout_studies, models, tmp_path):
    src = [s for s in heldout_studies if s[0] == "typical"][1][2]  # one without the extra series
    data_dir = tmp_path / "data"
    shutil.copytree(src, data_dir / "spool" / "study", ignore=shutil.ignore_patterns("ground_truth"))
    index = Index.for_data_dir(data_dir)
    study_uid = None
    for f in sorted((data_dir / "spool").rglob("*.dcm")):
        meta = read_meta(f)
        study_uid = meta.study_uid
        index.record_instance(meta, f, f.stat().st_size, "CT1", received_at=0.0)
    assert index.mark_complete(study_uid, 0.0)
    worker = AnalysisWorker(Config(), index, models, None)
    claim = index.claim_next_complete("test")
    assert worker.process(claim.study_uid, claim.revision) == "analysed"
    results = {r.model: r for r in index.results(study_uid)}
    assert results["covid-typicality"].category == "typical"
    assert set(results["covid-typicality"].probabilities) == set(PATTERNS)
    assert index.study(study_uid).state == "analysed"
    index.close()
