"""A node data directory with one analysed Typical study (instances, result, SR, SC) and
a configuration with one user per role and one API token."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydicom.uid import generate_uid

from aenode.config import REPO_MODELS_DIR, Config, parse_config
from aenode.report.models import ModelInfo, SourceRef
from aenode.store.index import Index
from aenode.store.meta import read_meta
from tests.dicomfactory import write_ct_header

PASSWORDS = {"vera": "viewer-pass-1", "ines": "infection-pass-1", "rada": "radiologist-pass-1"}
ROLES = {"vera": "viewer", "ines": "infection-control", "rada": "radiologist"}
TOKEN = "prometheus-token-0123456789"
PATIENT_ID = "PID-WEB-77"
ACCESSION = "ACC-WEB-5"
CANARY_NAME = "CANARY^WEB^NAME"
MODEL = "covid-typicality"
PROBS = {"typical": 0.86, "indeterminate": 0.08, "atypical": 0.04, "negative": 0.02}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def hashes() -> dict[str, str]:
    from aenode.web.auth import hash_password

    return {u: hash_password(p) for u, p in PASSWORDS.items()}


def web_section(hashes: dict[str, str], **extra) -> dict:
    from aenode.web.auth import token_sha256

    return {"host": "127.0.0.1", "port": free_port(),
            "users": [{"name": u, "role": ROLES[u], "password_hash": h} for u, h in hashes.items()],
            "tokens": [{"name": "prometheus", "role": "viewer", "token_sha256": token_sha256(TOKEN)}],
            **extra}


def write_ct(path: Path, study_uid: str, series_uid: str, n: int) -> Path:
    return write_ct_header(path, study_uid, series_uid, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                           PatientName=CANARY_NAME, PatientID=PATIENT_ID, PatientBirthDate="19500101",
                           PatientSex="O", AccessionNumber=ACCESSION, StudyDate="20240315", StudyTime="093015",
                           StudyID="1", ReferringPhysicianName="", SeriesNumber=3,
                           SeriesDescription="CHEST 1.0 LUNG", InstanceNumber=n)


@dataclass
class WebEnv:
    data_dir: Path
    config: Config
    study_uid: str
    series_uid: str
    sops: list[str]


def seed_study(data_dir: Path, *, category: str = "typical", slices: int = 6,
               decide: Config | None = None) -> tuple[str, str, list[str]]:
    """Store ``slices`` CT instances, record a result and write its SR and SC; with
    ``decide``, let the real alert worker decide on it once (the dashboard's alert state)."""
    from aenode.report.publish import write_results
    from tests.report.factory import make_input

    study_uid, series_uid = generate_uid(), generate_uid()
    index = Index.for_data_dir(data_dir)
    sops = []
    try:
        for i in range(slices):
            p = write_ct(data_dir / "spool" / study_uid / f"{i}.dcm", study_uid, series_uid, i + 1)
            meta = read_meta(p)
            index.record_instance(meta, p, p.stat().st_size, "CT01")
            sops.append(meta.sop_instance_uid)
        claimed = index.claim_next_complete("test") if index.mark_complete(
            study_uid, index.receiving_studies()[-1][1]) else None
        probs = dict(PROBS) if category == "typical" else {"typical": 0.03, "indeterminate": 0.04,
                                                           "atypical": 0.03, "negative": 0.9}
        index.record_result(study_uid, 1, MODEL, category, probs, selected_series=series_uid, involvement=12.5,
                            detail={"version": "1.0.0", "alerts": ["typical", "indeterminate"]})
        if claimed:
            index.finish_study(study_uid, 1, "analysed")
        if decide is not None:
            decide_alerts(decide, index)
    finally:
        index.close()
    inp = make_input(n=slices, category=category, study_uid=study_uid, series_uid=series_uid,
                     refs=[SourceRef("1.2.840.10008.5.1.4.1.1.2", s) for s in sops])
    inp = dataclasses.replace(inp, model=ModelInfo(MODEL, "1.0.0", "aenode project", "cd" * 32))
    write_results(data_dir, inp)
    return study_uid, series_uid, sops


def decide_alerts(config: Config, index: Index) -> int:
    """One pass of the real alert worker: records the alert decisions (the dashboard's too)."""
    from aenode.alert.worker import AlertWorker

    worker = AlertWorker(config, index)
    try:
        return worker.run_once()
    finally:
        worker.close()


@contextmanager
def open_app(config: Config) -> Iterator[FastAPI]:
    """The application over the data directory's stores, as ``aenode serve`` wires it."""
    from aenode.web.app import create_app

    index = Index.for_data_dir(config.node.data_dir)
    app = create_app(config, index)
    try:
        yield app
    finally:
        app.state.web.close()
        index.close()


@pytest.fixture
def web_env(tmp_path, hashes) -> WebEnv:
    data_dir = tmp_path / "data"
    config = parse_config({
        "node": {"data_dir": str(data_dir), "name": "web-test-node", "port": free_port()},
        "model": {"path": str(REPO_MODELS_DIR)},
        "web": web_section(hashes),
    })
    study_uid, series_uid, sops = seed_study(data_dir, decide=config)
    return WebEnv(data_dir, config, study_uid, series_uid, sops)


@pytest.fixture
def client(web_env):
    from fastapi.testclient import TestClient

    with open_app(web_env.config) as app, TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def login(client, user: str, password: str | None = None):
    import re

    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": user, "password": password or PASSWORDS[user],
                                    "csrf_token": token, "next": "/alerts"}, follow_redirects=False)
    return r


def session_csrf(client) -> str:
    import re

    page = client.get("/alerts")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
