"""A node data directory with one stored study and a model manifest, for alert tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from aenode.config import Config, parse_config
from aenode.store.index import Index
from aenode.store.meta import read_meta
from tests.dicomfactory import write_ct_header

CANARY_NAME = "CANARY^PHI^SHOULD^NOT^LEAK"
CANARY_BIRTH = "19610203"
PATIENT_ID = "PID-0001"
ACCESSION = "ACC-42"
MODEL = "covid19-ct"

MANIFEST = """
name = "covid19-ct"
version = "1.2.0"
sha256 = "%s"
intended_use = "Test manifest for alert tests: COVID-19 CT categories."

[[coding_scheme]]
designator = "99AENCOV"
name = "aenode COVID-19 CT categories"
version = "1"

[input]
name = "ct"
shape = [1, 1, 16, 32, 32]

[preprocessing]
mode = "fit"
hu_window = [-1000.0, 400.0]

[outputs]
probabilities = "probs"

[[outputs.classes]]
name = "Typical"
code_value = "COV-T"
scheme_designator = "99AENCOV"
meaning = "Typical appearance"
alert = true
alert_threshold = 0.5

[[outputs.classes]]
name = "Indeterminate"
code_value = "COV-I"
scheme_designator = "99AENCOV"
meaning = "Indeterminate appearance"
alert = true
alert_threshold = 0.5

[[outputs.classes]]
name = "Atypical"
code_value = "COV-A"
scheme_designator = "99AENCOV"
meaning = "Atypical appearance"

[[outputs.classes]]
name = "Negative"
code_value = "COV-N"
scheme_designator = "99AENCOV"
meaning = "Negative for pneumonia"
""" % ("0" * 64)

PROBS = {
    "Typical": {"Typical": 0.91, "Indeterminate": 0.05, "Atypical": 0.02, "Negative": 0.02},
    "Indeterminate": {"Typical": 0.2, "Indeterminate": 0.7, "Atypical": 0.05, "Negative": 0.05},
    "Atypical": {"Typical": 0.1, "Indeterminate": 0.1, "Atypical": 0.7, "Negative": 0.1},
    "Negative": {"Typical": 0.03, "Indeterminate": 0.04, "Atypical": 0.03, "Negative": 0.9},
}


@dataclass
class Env:
    root: Path
    data_dir: Path
    models: Path
    index: Index
    study_uid: str
    series_uid: str

    def config(self, alerts: dict | None = None, **sections) -> Config:
        data = {
            "node": {"data_dir": str(self.data_dir), "name": "ic-node-1"},
            "model": {"path": str(self.models)},
            "web": {"host": "127.0.0.1", "port": 8400},
            "delivery": {"backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.5, "poll_seconds": 0.05,
                         "max_attempts": 20},
            "alerts": alerts or {},
        }
        data.update(sections)
        return parse_config(data)

    def record(self, category: str, revision: int = 1) -> None:
        self.index.record_result(self.study_uid, revision, MODEL, category, PROBS[category],
                                 selected_series=self.series_uid, detail={"version": "1.2.0"})


def write_instance(path: Path, study_uid: str, series_uid: str) -> Path:
    return write_ct_header(path, study_uid, series_uid, PatientName=CANARY_NAME, PatientBirthDate=CANARY_BIRTH,
                           PatientID=PATIENT_ID, PatientSex="O", AccessionNumber=ACCESSION, StudyDate="20240315",
                           StudyTime="093015.25", StationName="CT-SCANNER-1", InstitutionName="Test Hospital",
                           ReferringPhysicianName="REFERRER^NOT^IN^ALERT",
                           StudyDescription="CHEST CT DESCRIPTION NOT IN ALERT", SeriesNumber=2, InstanceNumber=1)


def make_env(root: Path) -> Env:
    data_dir = root / "data"
    models = root / "models"
    (models / MODEL).mkdir(parents=True)
    (models / MODEL / "model.toml").write_text(MANIFEST)
    index = Index.for_data_dir(data_dir)
    study_uid, series_uid = generate_uid(), generate_uid()
    f = write_instance(data_dir / "spool" / "a.dcm", study_uid, series_uid)
    index.record_instance(read_meta(f), f, f.stat().st_size, "SCU", received_at=time.time())
    return Env(root, data_dir, models, index, study_uid, series_uid)


def drive(config: Config, index: Index, timeout: float = 20.0, settle: float = 0.0) -> None:
    """Run the alert worker and the delivery worker until the outbox has nothing left to do."""
    from aenode.alert.worker import AlertWorker
    from aenode.deliver.outbox import Outbox
    from aenode.deliver.worker import DeliveryWorker

    outbox = Outbox.for_config(config)
    alerts = AlertWorker(config, index, outbox=outbox)
    delivery = DeliveryWorker(config, index, outbox=outbox)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            alerts.run_once()
            delivery.run_once()
            counts = outbox.counts()
            if counts["pending"] == 0 and counts["sending"] == 0:
                break
            time.sleep(0.05)
    finally:
        alerts.close()
        outbox.close()


def outbox_rows(config: Config):
    from aenode.deliver.outbox import Outbox

    with Outbox.for_config(config) as ob:
        return ob.rows()
