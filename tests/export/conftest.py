"""A node's data directory with analysed phantom studies (SR/SC written), canary identities
in the headers and radiologists' confirmations in the web store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from aenode.config import Config, parse_config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import OutboxPublisher
from aenode.infer.registry import ModelRegistry
from aenode.infer.worker import AnalysisWorker
from aenode.phantom import generate_study
from aenode.store.index import Index
from aenode.store.meta import read_meta
from aenode.web.store import WebStore

PATTERNS = ("typical", "indeterminate", "atypical", "negative")
CANARY_NAME = "CNRYSURNAME^CNRYGIVEN"
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass
class NodeData:
    config: Config
    data_dir: Path
    studies: dict[str, str]            # study UID -> pattern
    patient_ids: dict[str, str]        # study UID -> canary patient ID
    confirmed: dict[str, str]          # study UID -> radiologist's category


def ingest(index: Index, folder: Path, spool: Path) -> str:
    """Copy a generated study into the spool and index it, as the receiver would."""
    dest = spool / folder.name
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("ground_truth"))
    study_uid = ""
    for f in sorted(dest.rglob("*.dcm")):
        meta = read_meta(f)
        study_uid = meta.study_uid
        index.record_instance(meta, f, f.stat().st_size, "CT1", received_at=1_700_000_000.0)
    assert index.mark_complete(study_uid, 1_700_000_000.0)
    return study_uid


@pytest.fixture(scope="session")
def node_data(tmp_path_factory) -> NodeData:
    root = tmp_path_factory.mktemp("export_node")
    data_dir = root / "data"
    config = parse_config({"node": {"data_dir": str(data_dir)}, "model": {"path": str(MODELS_DIR)}})
    index = Index.for_data_dir(data_dir)
    studies: dict[str, str] = {}
    pids: dict[str, str] = {}
    for i, pattern in enumerate(PATTERNS):
        pid = f"CNRYPID{i:03d}"
        gen = root / "gen" / pattern
        generate_study(gen, pattern, seed=930_000 + i, slices=128, slice_thickness=2.5,
                       extra_series=(i == 0), patient_name=CANARY_NAME, patient_id=pid)
        uid = ingest(index, gen, data_dir / "spool")
        studies[uid] = pattern
        pids[uid] = pid
    outbox = Outbox.for_config(config)
    worker = AnalysisWorker(config, index, ModelRegistry.from_config(config), OutboxPublisher(config, outbox))
    while (claim := index.claim_next_complete("test")) is not None:
        assert worker.process(claim.study_uid, claim.revision) == "analysed"
    outbox.close()
    web = WebStore.for_data_dir(data_dir)
    confirmed = {}
    for uid, pattern in list(studies.items())[:3]:
        ai = next(r.category for r in index.results(uid) if r.model == "covid-typicality")
        web.confirm(study_uid=uid, model="covid-typicality", revision=1, ai_category=ai, category=pattern,
                    infection_status="pcr-positive" if pattern == "typical" else "unknown",
                    radiologist_id="CNRYRAD", user="rad", role="radiologist", note=None)
        confirmed[uid] = pattern
    web.close()
    index.close()
    return NodeData(config, data_dir, studies, pids, confirmed)


@pytest.fixture(autouse=True)
def _logging_to_real_stderr():
    """``aenode.cli.main`` points logging at the (captured) stderr of the moment; put it back
    so that later tests do not log into a closed capture."""
    yield
    import sys

    from aenode.logs import configure_logging

    configure_logging("INFO", stream=sys.__stderr__)
