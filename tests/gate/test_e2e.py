"""End to end (issue 12): DCMTK storescu -> the node (every worker) -> real Orthanc peers.

One in-domain Typical phantom and one made out of domain (stored values +700 HU: lungs read
as soft tissue).  The Typical study's SR, SC and SEG reach two real Orthanc instances, one
over DICOM C-STORE and one over DICOMweb STOW-RS, in the same study; the out-of-domain
study's SR carries no category (dciodvfy clean) and says why with the measured value, its
SC banner says it, the webhook gets an alert of its own kind (never Typical), and
``aenode status`` and the dashboard show it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
from pydicom import dcmread

from aenode.config import parse_config
from aenode.node import running_node
from aenode.peers import wait_for
from aenode.peers.orthanc import Orthanc, free_port
from aenode.peers.webhook import WebhookServer
from tests.gate.conftest import PACKAGE, dciodvfy_errors
from tests.web.conftest import PASSWORDS, hashes, web_section  # noqa: F401 - hashes is a fixture

STORESCU = "/usr/bin/storescu"


def _storescu(port: int, folder: Path) -> None:
    r = subprocess.run([STORESCU, "-aet", "CT01", "-aec", "AENODE", "+sd", "+r", "127.0.0.1", str(port),
                        str(folder)], capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


def _series_folder(study: Path) -> Path:
    return next(p for p in sorted(study.iterdir()) if p.is_dir() and p.name != "ground_truth")


def _login(client: httpx.Client, user: str) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": user, "password": PASSWORDS[user], "csrf_token": token,
                                    "next": "/alerts"})
    assert r.status_code in (200, 303), r.text[:300]


def test_seg_and_out_of_domain_end_to_end(tmp_path, typical_study, soft_tissue_study, hashes, capsys):  # noqa: F811
    models = tmp_path / "models"
    shutil.copytree(PACKAGE, models / PACKAGE.name)  # the shipped package, manifest as it is
    pacs = Orthanc(tmp_path / "pacs").start()
    web_pacs = Orthanc(tmp_path / "webpacs", dicomweb=True).start()
    wh = WebhookServer().start()
    try:
        config = parse_config({
            "node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": free_port(),
                     "data_dir": str(tmp_path / "data"), "name": "gate-e2e"},
            "stability": {"quiet_seconds": 1.0, "after_release_seconds": 0.3},
            "delivery": {"poll_seconds": 0.1, "backoff_base_seconds": 0.2, "backoff_cap_seconds": 1.0},
            "model": {"path": str(models)},
            "destinations": [
                {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
                {"type": "dicomweb", "name": "web", "url": web_pacs.dicomweb_url, "insecure": True}],
            "alerts": {"webhook": {"url": wh.url, "secret": "shared-s3cret", "timeout_seconds": 2,
                                   "insecure": True}},
            "web": web_section(hashes),
        })
        typ_uid = str(dcmread(next(_series_folder(typical_study).iterdir())).StudyInstanceUID)
        ood_uid = str(dcmread(next(_series_folder(soft_tissue_study).iterdir())).StudyInstanceUID)
        with running_node(config) as node:
            _storescu(node.port, _series_folder(typical_study))
            _storescu(node.port, _series_folder(soft_tissue_study))
            for uid in (typ_uid, ood_uid):
                assert wait_for(lambda u=uid: (s := node.index.study(u)) is not None and s.state in
                                ("analysed", "skipped", "error"), 240), node.index.study(uid)
            typ = node.index.results(typ_uid)[-1]
            ood = node.index.results(ood_uid)[-1]
            assert node.index.study(typ_uid).state == "analysed" and typ.category == "typical"
            assert node.index.study(ood_uid).state == "analysed" and ood.category is None
            assert ood.probabilities is None and ood.detail["state"] == "out-of-domain"
            assert "median lung attenuation" in node.index.study(ood_uid).reason
            measured = next(c["value"] for c in ood.detail["domain"]["checks"] if c["name"] == "lung_median_hu")

            # SR, SC and SEG of each study in both PACS, in the study they describe.
            def stored(o: Orthanc, uid: str) -> list[str]:
                return sorted(str(t.get("Modality")) for t in o.all_tags() if t.get("StudyInstanceUID") == uid
                              and t.get("Modality") in ("SR", "OT", "SEG"))

            for o in (pacs, web_pacs):
                assert wait_for(lambda o=o: stored(o, typ_uid) == ["OT", "SEG", "SR"], 60), stored(o, typ_uid)
                assert wait_for(lambda o=o: stored(o, ood_uid) == ["OT", "SR"], 60), stored(o, ood_uid)

            # One webhook alert per study: Typical, and the out-of-domain kind (never a category).
            assert wait_for(lambda: len(wh.accepted) >= 2, 30)
            time.sleep(0.5)  # a duplicate would arrive within one alert poll and one delivery
            bodies = {json.loads(a["body"])["study"]["study_instance_uid"]: json.loads(a["body"])
                      for a in wh.accepted}
            assert len(wh.accepted) == 2 and bodies[typ_uid]["category"] == "typical"
            alert = bodies[ood_uid]
            assert alert["category"] == "out-of-domain" and alert["kind"] == "not-assessed"
            assert alert["message"] == "AI could not assess; needs a radiologist's review"
            assert alert["probabilities"] is None and alert["probability"] is None

            # The dashboard's study page says it, with the measured value.
            with httpx.Client(base_url=node.web.url, follow_redirects=True, timeout=30) as c:
                _login(c, "ines")
                page = c.get(f"/studies/{ood_uid}").text
                assert "Outside the validated domain of the model" in page
                assert f"{measured:.0f} HU" in page
                api = c.get(f"/api/studies/{ood_uid}").json()
                res = next(r for r in api["results"] if r["model"] == "covid-typicality")
                assert res["state"] == "out-of-domain" and res["category"] is None
                assert res["alert"]["category"] == "out-of-domain" and not res["has_seg"]

        # The stored objects: 0 dciodvfy errors; the SR says it outside the domain.
        rdir = Path(config.node.data_dir) / "results"
        typ_files = sorted((rdir / typ_uid).rglob("*.dcm"))
        ood_files = sorted((rdir / ood_uid).rglob("*.dcm"))
        assert [p.name for p in typ_files] == ["sc.dcm", "seg.dcm", "sr.dcm"]
        assert [p.name for p in ood_files] == ["sc.dcm", "sr.dcm"]
        for p in typ_files + ood_files:
            assert dciodvfy_errors(p) == [], p
        sr = subprocess.run(["/usr/bin/dsrdump", str(ood_files[1])], capture_output=True, text=True).stdout
        assert "Outside the validated domain of the model - no AI category" in sr and f"{measured:.1f}" in sr
        assert "AI classification category" not in sr
        assert "outside the validated domain" in str(dcmread(ood_files[0], stop_before_pixels=True)
                                                      .DerivationDescription)

        # aenode status shows it (table and JSON).
        from aenode.cli import main

        cfg = tmp_path / "aenode.toml"
        cfg.write_text(f'[node]\ndata_dir = "{config.node.data_dir}"\n[model]\npath = "{models}"\n')
        assert main(["status", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "none: out-of-domain (median lung attenuation" in out
        assert main(["status", "--config", str(cfg), "--json"]) == 0
        rows = {r["study_uid"]: r for r in json.loads(capsys.readouterr().out)["studies"]}
        assert rows[ood_uid]["result_state"] == "out-of-domain" and rows[ood_uid]["category"] is None
        assert rows[typ_uid]["category"] == "typical" and rows[typ_uid]["result_state"] == "analysed"
    finally:
        wh.stop()
        web_pacs.stop()
        pacs.stop()
