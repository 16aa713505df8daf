"""End to end with real peers: DCMTK storescu -> aenode node -> Orthanc, and Orthanc routing
the node's own SR/SC back to it (stored, never analysed).

``test_result_roundtrip_and_no_loop`` runs the node with receive + delivery only and
publishes the result itself (from the received instances), so it does not depend on the
analysis worker.  ``test_full_pipeline`` needs ``aenode.infer.worker`` and a model
package; it is skipped until they exist.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

import aenode.phantom as phantom
from aenode.config import parse_config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import publish_result
from aenode.node import running_node
from aenode.report.models import ReportInput, SourceRef, header_from_dataset
from tests.deliver.conftest import NODE_AE
from tests.report.factory import CLASSES, MODEL, SCHEME


def node_config(tmp_path: Path, node_port: int, orthanc, **extra):
    return parse_config({
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": node_port, "data_dir": str(tmp_path / "data")},
        "stability": {"quiet_seconds": 1.0, "after_release_seconds": 0.3},
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        "delivery": {"poll_seconds": 0.1, "backoff_base_seconds": 0.2, "backoff_cap_seconds": 1.0},
        **extra,
    })


def storescu(port: int, *folders: Path) -> None:
    """One association for all ``folders`` (a scanner sends a study's series together: with
    one storescu per series, a loaded machine can leave more than the release rule's 0.3 s
    between them, and the study completes early and gets a second revision)."""
    r = subprocess.run(["/usr/bin/storescu", "-aet", "CT01", "-aec", NODE_AE, "+sd", "+r", "127.0.0.1", str(port),
                        *map(str, folders)], capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


def wait(pred, timeout=30.0, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def orthanc_study(orthanc, study_uid: str) -> list[dict]:
    return [t for t in orthanc.all_tags() if t.get("StudyInstanceUID") == study_uid]


def test_result_roundtrip_and_no_loop(tmp_path, orthanc, node_port):
    study = phantom.generate_study(tmp_path / "study", "typical", seed=3, slices=30, extra_series=False)
    config = node_config(tmp_path, node_port, orthanc)
    with running_node(config, workers=("delivery",)) as node:
        storescu(node.port, tmp_path / "study" / Path(study.series[0][3]).name)
        uid = study.study_instance_uid
        wait(lambda: (s := node.index.study(uid)) is not None and s.state == "complete")
        instances = node.index.instances(uid)
        assert len(instances) == 30
        # what the analysis stage would hand over: headers + refs in slice order, a result
        rows = sorted(instances, key=lambda r: r.image_position[2])
        first = dcmread(rows[0].path, stop_before_pixels=True)
        vol = np.stack([dcmread(r.path).pixel_array for r in rows]).astype(np.int16) - 1024
        inp = ReportInput(header=header_from_dataset(first), series_instance_uid=rows[0].series_uid,
                          source_refs=[SourceRef(r.sop_class_uid, r.sop_instance_uid) for r in rows],
                          classes=CLASSES, probabilities=[0.8, 0.1, 0.05, 0.05], category="typical",
                          model=MODEL, coding_schemes=[SCHEME], lung_involvement_percent=7.0, volume=vol,
                          lesion_map=(vol > -500).astype(np.uint8))
        paths = publish_result(config, inp)
        sr_uid = str(dcmread(paths[0]).SOPInstanceUID)
        tags = wait(lambda: len(orthanc_study(orthanc, uid)) == 2 and orthanc_study(orthanc, uid))
        assert sorted(t["Modality"] for t in tags) == ["OT", "SR"]
        with Outbox.for_config(config) as box:  # Orthanc may list them just before the row is marked
            wait(lambda: box.summary_for_study(uid)["pacs"]["state"] == "sent")
        # Orthanc routes the node's output back to it (a PACS auto-routing rule does this).
        ids = [i for i in orthanc.instances() if orthanc.tags(i).get("StudyInstanceUID") == uid]
        orthanc.post("/modalities/aenode/store", {"Resources": ids, "Synchronous": True})
        wait(lambda: node.index.instances(uid) and len(node.index.instances(uid)) == 32)
        own = [r for r in node.index.instances(uid) if r.own_output]
        assert {r.sop_instance_uid for r in own} >= {sr_uid} and len(own) == 2
        time.sleep(1.5)  # longer than the quiet period: the study must not be reopened
        s = node.index.study(uid)
        assert s.state == "complete" and s.revision == 1, s


MODEL_DIR = Path(__file__).resolve().parents[2] / "models"


COVID_MODEL = MODEL_DIR / "covid-typicality"


@pytest.mark.parametrize("pattern,meaning", [("typical", "Typical appearance"), ("negative", "Negative")])
def test_full_pipeline(tmp_path, orthanc, node_port, pattern, meaning):
    study = phantom.generate_study(tmp_path / "study", pattern, seed=5, extra_series=True)
    config = node_config(tmp_path, node_port, orthanc, model={"path": str(COVID_MODEL), "providers": ["cpu"]})
    with running_node(config) as node:
        storescu(node.port, *sorted(p for p in (tmp_path / "study").iterdir()
                                    if p.is_dir() and p.name != "ground_truth"))
        uid = study.study_instance_uid

        def srs():
            return [i for i in orthanc.instances()
                    if (t := orthanc.tags(i)).get("StudyInstanceUID") == uid and t.get("Modality") == "SR"
                    and t.get("Manufacturer") == "aenode"]

        [sr_id] = wait(srs, timeout=120)
        content = str(orthanc.get(f"/instances/{sr_id}/tags?simplify"))
        assert meaning in content and "UNVERIFIED" in content
        wait(lambda: any(t["Modality"] == "OT" and t.get("Manufacturer") == "aenode"
                         for t in orthanc_study(orthanc, uid)))
        wait(lambda: node.index.study(uid).state in ("analysed", "error", "skipped"))
        before = node.index.study(uid)
        assert before.state == "analysed", before
        orthanc.post("/modalities/aenode/store", {"Resources": [sr_id], "Synchronous": True})
        time.sleep(2.0)  # longer than the quiet period
        after = node.index.study(uid)
        assert (after.revision, after.state) == (before.revision, before.state)
        assert len(srs()) == 1  # no second SR: the routed-back SR was not analysed
