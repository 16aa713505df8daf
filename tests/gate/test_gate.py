"""Domain gate, calibration and the SEG on real phantom studies through the shipped model
(issue 12): manifest schema, engine, report objects (dciodvfy), alert rules, predict CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from aenode.alert.rules import NOT_ASSESSED_MESSAGE, OUT_OF_DOMAIN, decide, result_category, rules_from_manifest
from aenode.cli import main
from aenode.infer.analyse import analyse_instances
from aenode.infer.cli import scan_folder
from aenode.infer.engine import Model, calibrated
from aenode.infer.manifest import ManifestError, load_manifest, parse_manifest
from aenode.report.adapters import report_input_from_outcome
from aenode.report.publish import write_results
from aenode.report.sc import banner_lines
from aenode.report.seg import SEG_SERIES_DESCRIPTION
from aenode.report.sr import OUT_OF_DOMAIN_TEXT
from aenode.report.uids import result_uids
from aenode.store.marks import is_node_output
from tests.gate.conftest import PACKAGE, dciodvfy_errors


def _analyse(model: Model, folder: Path):
    infos, corrupt, _ = scan_folder(folder)
    assert not corrupt
    a = analyse_instances(infos, [model], keep_volumes=True)
    o = a.outcomes[0]
    return a, o, a.volumes[o.selected_series]


def _dsrdump(path: Path) -> str:
    r = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---- manifest ----------------------------------------------------------------------------

def _manifest_dict() -> dict:
    import tomllib

    return tomllib.loads((PACKAGE / "model.toml").read_text())


def test_shipped_manifest_declares_gate_seg_and_temperature():
    m = load_manifest(PACKAGE)
    # the ranges training/fit_head.py measured (its kept copy) are the ones export.py sealed
    fit = json.loads((PACKAGE.parents[1] / "training" / "calibration_fit.json").read_text())
    assert m.domain is not None and m.domain.lung_median_hu == fit["ranges"]["lung_median_hu"]
    assert m.domain.lung_volume_ml == fit["ranges"]["lung_volume_ml"] == [500.0, 8000.0] and m.domain.alert
    assert m.domain.feature_distance is not None and m.domain.feature_distance.output == "domain_distance"
    assert 5.0 < m.domain.feature_distance.max < 50.0
    assert m.domain.feature_distance.max == fit["domain_distance_max"]
    assert m.outputs.seg and m.outputs.scores == "probabilities" and 0.5 < m.outputs.temperature < 2.0


@pytest.mark.parametrize("change,problem", [
    (lambda d: d["domain"].update(lung_median_hu=[-500.0, -900.0]), "low must be below high"),
    (lambda d: d["outputs"].pop("lung_map"), "need outputs.lung_map"),
    (lambda d: (d["outputs"].pop("lesion_map"), d.pop("domain")), "outputs.seg"),
    (lambda d: d["outputs"].update(temperature=0.0), "outputs.temperature"),
    (lambda d: d["outputs"].update(scores="odds"), "outputs.scores"),
    (lambda d: d["domain"]["feature_distance"].update(max=0.0), "domain.feature_distance.max"),
    (lambda d: d["domain"]["feature_distance"].pop("output"), "domain.feature_distance.output"),
])
def test_manifest_rejects_bad_gate_and_outputs(change, problem):
    d = _manifest_dict()
    change(d)
    with pytest.raises(ManifestError) as exc:
        parse_manifest(d, "model.toml")
    assert problem in str(exc.value)


# ---- calibration -------------------------------------------------------------------------

def test_temperature_on_probabilities_and_logits():
    p = np.array([0.7, 0.2, 0.05, 0.05])
    assert np.allclose(calibrated(p, "probabilities", 1.0), p)
    hot = calibrated(p, "probabilities", 2.0)
    assert np.isclose(hot.sum(), 1.0) and hot.argmax() == 0 and hot[0] < p[0]  # softer, same argmax
    assert np.allclose(hot, np.sqrt(p) / np.sqrt(p).sum())
    logits = np.log(p) + 3.0  # logits are defined up to a constant
    assert np.allclose(calibrated(logits, "logits", 1.0), p)
    assert np.allclose(calibrated(logits, "logits", 2.0), hot)


def test_engine_applies_the_manifest_temperature(tmp_path, typical_study, covid_model):
    pkg = tmp_path / "pkg"
    shutil.copytree(PACKAGE, pkg)
    toml = (pkg / "model.toml").read_text()
    import re

    (pkg / "model.toml").write_text(re.sub(r"(?m)^temperature = [0-9.]+", "temperature = 3.0", toml))
    hot = Model(pkg)
    _, base, _ = _analyse(covid_model, typical_study)
    _, warm, _ = _analyse(hot, typical_study)
    assert base.prediction.category == warm.prediction.category == "typical"
    t0 = covid_model.manifest.outputs.temperature
    raw = np.array(list(base.prediction.detail["raw_scores"].values()))
    assert np.allclose(list(base.prediction.probabilities.values()), calibrated(raw, "probabilities", t0))
    assert np.allclose(list(warm.prediction.probabilities.values()), calibrated(raw, "probabilities", 3.0))
    assert warm.prediction.probabilities["typical"] < base.prediction.probabilities["typical"]


# ---- domain gate in the engine, the SR/SC and predict --------------------------------------

def test_in_domain_study_keeps_its_category_and_gets_a_seg(tmp_path, typical_study, covid_model):
    a, o, vol = _analyse(covid_model, typical_study)
    assert o.state == "analysed" and a.state == "analysed" and a.reason is None
    p = o.prediction
    assert p.category == "typical" and p.domain is not None and p.domain.inside
    inp = report_input_from_outcome(covid_model.manifest, p, vol, o.selected_series, 1)
    paths = write_results(tmp_path / "data", inp, node_name="gate-node")
    assert [x.name for x in paths] == ["sr.dcm", "sc.dcm", "seg.dcm"]
    seg_path = paths[2]
    assert dciodvfy_errors(seg_path) == []
    seg = dcmread(seg_path)
    uids = result_uids(inp.study_instance_uid, o.selected_series, covid_model.manifest.sha256, 1)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == inp.study_instance_uid
    assert seg.SeriesInstanceUID == uids.seg_series_instance_uid and seg.SOPInstanceUID == uids.seg_sop_instance_uid
    assert seg.SeriesInstanceUID not in {uids.sr_series_instance_uid, uids.sc_series_instance_uid}
    assert seg.SeriesDescription == SEG_SERIES_DESCRIPTION and is_node_output(seg)
    assert seg.Manufacturer == "aenode" and str(seg.SoftwareVersions).startswith("aenode")
    segs = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert segs[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert segs[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"
    # Frames reference instances of the analysed series, and the lesion segment is not empty.
    refs = {str(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for r in s.ReferencedInstanceSequence}
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == o.selected_series
    assert refs <= {u for u in vol.sop_instance_uids if u}
    frame_segments = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                      for f in seg.PerFrameFunctionalGroupsSequence]
    assert frame_segments.count(1) > 0 and frame_segments.count(2) > frame_segments.count(1)
    # Deterministic: built again (a retry), the same bytes' identity.
    again = write_results(tmp_path / "data2", inp, node_name="gate-node")[2]
    assert dcmread(again, stop_before_pixels=True).SOPInstanceUID == seg.SOPInstanceUID
    # In two passes, as the analysis worker writes them (every SR before any SC/SEG): the
    # SR alone from an input without images, then the SC and SEG; same objects, same UIDs.
    sr_only = report_input_from_outcome(covid_model.manifest, p, vol, o.selected_series, 1, images=False)
    assert sr_only.overlay is None and sr_only.segmentation_source is None
    first = write_results(tmp_path / "data3", sr_only, node_name="gate-node", parts=("sr",))
    assert [x.name for x in first] == ["sr.dcm"] and not (first[0].parent / "sc.dcm").exists()
    rest = write_results(tmp_path / "data3", inp, node_name="gate-node", parts=("sc", "seg"))
    assert [x.name for x in rest] == ["sc.dcm", "seg.dcm"]
    assert dcmread(rest[1], stop_before_pixels=True).SOPInstanceUID == seg.SOPInstanceUID
    assert dcmread(first[0]).SOPInstanceUID == dcmread(paths[0]).SOPInstanceUID
    with pytest.raises(ValueError, match="unknown result parts"):
        write_results(tmp_path / "data4", inp, parts=("sr", "pdf"))


def test_out_of_domain_study_gets_no_category(tmp_path, soft_tissue_study, covid_model):
    a, o, vol = _analyse(covid_model, soft_tissue_study)
    p = o.prediction
    assert o.state == OUT_OF_DOMAIN and a.state == "analysed" and OUT_OF_DOMAIN in a.reason
    assert p.category is None and p.alerts == [] and not p.domain.inside
    hu = next(c for c in p.domain.checks if c.name == "lung_median_hu")
    assert hu.value > -560.0 and "median lung attenuation" in o.reason and f"{hu.value:.0f} HU" in o.reason
    doc = o.as_dict()
    assert doc["category"] is None and doc["probabilities"] == {} and doc["involvement_percent"] is None
    assert set(doc["withheld_probabilities"]) == {"typical", "indeterminate", "atypical", "negative"}

    inp = report_input_from_outcome(covid_model.manifest, p, vol, o.selected_series, 1)
    assert inp.category is None and inp.segmentation is None and inp.overlay is None
    paths = write_results(tmp_path / "data", inp)
    assert [x.name for x in paths] == ["sr.dcm", "sc.dcm"]  # no lesion map claim either
    sr, sc = paths
    assert dciodvfy_errors(sr) == [] and dciodvfy_errors(sc) == []
    text = _dsrdump(sr)
    assert OUT_OF_DOMAIN_TEXT in text and "Median lung attenuation" in text and f"{hu.value:.1f}" in text
    assert "AI classification category" not in text and "Typical appearance" not in text
    assert "{probability}" not in text  # no class probabilities either
    lines = [t for t, _ in banner_lines(inp)]
    assert "Outside the validated domain - no AI category" in lines
    assert any("median lung attenuation" in t for t in lines) and not any("Category:" in t for t in lines)
    assert "outside the validated domain" in str(dcmread(sc, stop_before_pixels=True).DerivationDescription)


def test_predict_shows_out_of_domain(soft_tissue_study, typical_study, capsys):
    code = main(["predict", str(soft_tissue_study), "--json", "--model", "covid-typicality"])
    doc = json.loads(capsys.readouterr().out)
    covid = doc["models"][0]
    assert code == 0 and covid["state"] == OUT_OF_DOMAIN and covid["category"] is None
    assert covid["domain"]["inside"] is False and "median lung attenuation" in covid["domain"]["reason"]
    code = main(["predict", str(soft_tissue_study), "--model", "covid-typicality"])
    out = capsys.readouterr().out
    assert "outside the validated domain of the model, no AI category" in out and "category: typical" not in out
    main(["predict", str(typical_study), "--json", "--model", "covid-typicality"])
    covid = json.loads(capsys.readouterr().out)["models"][0]
    assert covid["state"] == "analysed" and covid["domain"]["inside"] is True


def _package_with(tmp_path: Path, pattern: str, repl: str) -> Path:
    import re

    pkg = tmp_path / "pkg"
    shutil.copytree(PACKAGE, pkg)
    toml = (pkg / "model.toml").read_text()
    (pkg / "model.toml").write_text(re.sub(pattern, repl, toml, count=1, flags=re.M))
    return pkg


def test_feature_distance_is_measured_and_gates(tmp_path, typical_study, covid_model):
    """The graph's distance output is read on every study; a study farther from the
    training features than the declared maximum gets no category, and the reason says so."""
    _, o, _ = _analyse(covid_model, typical_study)
    checks = {c.name: c for c in o.prediction.domain.checks}
    fd = checks["feature_distance"]
    assert fd.inside and fd.value is not None and 0.0 < fd.value <= fd.high
    strict = Model(_package_with(tmp_path, r"^feature_distance = .*$",
                                 'feature_distance = { output = "domain_distance", max = 0.01 }'))
    _, o2, _ = _analyse(strict, typical_study)
    assert o2.prediction.category is None and o2.prediction.out_of_domain
    assert "distance of the image features from the training data" in o2.prediction.domain.reason
    assert f"{fd.value:.1f}" in o2.prediction.domain.reason


def test_lung_involvement_gates_on_the_same_feature_distance(typical_study, covid_model):
    """lung-involvement runs covid-typicality's network and seals the same training-feature
    reference (since 2.1.0): it measures the same distance on the same study and keeps its
    grade inside the domain (before, a real chest CT got a grade with probability 1.0)."""
    involvement = Model(PACKAGE.parent / "lung-involvement")
    assert involvement.manifest.domain is not None and involvement.manifest.domain.feature_distance is not None
    _, o, _ = _analyse(covid_model, typical_study)
    _, oi, _ = _analyse(involvement, typical_study)
    fd = {c.name: c for c in o.prediction.domain.checks}["feature_distance"]
    fi = {c.name: c for c in oi.prediction.domain.checks}["feature_distance"]
    assert fd.value is not None and fi.value is not None
    assert fi.inside and abs(fi.value - fd.value) <= 1e-3 * fd.value
    assert oi.prediction.category is not None and not oi.prediction.out_of_domain


def test_feature_distance_output_must_exist(tmp_path):
    pkg = _package_with(tmp_path, r"^feature_distance = .*$",
                        'feature_distance = { output = "no_such_output", max = 20.0 }')
    with pytest.raises(ManifestError) as exc:
        Model(pkg)
    assert "domain.feature_distance.output" in str(exc.value) and "no_such_output" in str(exc.value)


def test_gate_fails_closed_without_the_input(covid_model, typical_study):
    """interpret() without the model input cannot measure lung HU: no category, not a guess."""
    _, o, vol = _analyse(covid_model, typical_study)
    x, grid = covid_model.prepare(vol)
    p = covid_model.interpret(covid_model.run(x), grid, timings={})
    assert p.category is None and p.out_of_domain


# ---- alert rules -------------------------------------------------------------------------

def test_alert_rules_for_out_of_domain():
    rules = rules_from_manifest(load_manifest(PACKAGE))
    assert OUT_OF_DOMAIN in rules.alert_classes
    assert result_category(None, {"state": OUT_OF_DOMAIN}) == OUT_OF_DOMAIN
    assert result_category(None, {"state": "analysed"}) is None
    d = decide(rules, rules.alert_classes, OUT_OF_DOMAIN, None)
    assert d is not None and d.alerting and d.category == OUT_OF_DOMAIN and d.probability is None
    # A channel limited to Typical never gets it; one that lists it does.
    assert not decide(rules, ["typical"], OUT_OF_DOMAIN, None).alerting
    assert decide(rules, ["typical", OUT_OF_DOMAIN], OUT_OF_DOMAIN, None).alerting
    assert rules.code(OUT_OF_DOMAIN)["meaning"] == OUT_OF_DOMAIN_TEXT
    assert NOT_ASSESSED_MESSAGE == "AI could not assess; needs a radiologist's review"
