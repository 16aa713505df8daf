"""Retention (issue 15, 10): spooled images are deleted once delivered and old enough;
results stay; a late instance afterwards starts a new revision cleanly.  Instances go in
through the real SCP with DCMTK storescu."""

from __future__ import annotations

import os
import time

from pydicom.uid import generate_uid

from aenode.deliver.outbox import Outbox
from aenode.node import _OutboxDelivery, running_node, study_status
from aenode.peers import wait_for
from aenode.store.index import ANALYSED, RECEIVING
from aenode.store.retention import Retention, remove_purged_orphans
from aenode.store.stabilise import reconcile
from tests.receive.conftest import make_config, storescu
from tests.receive.dicomgen import ct_slice, save

DAY = 86400.0


def _received(tmp_path, node, n: int) -> tuple[str, str]:
    """Send ``n`` slices of a new study through the real SCP and wait until it completes."""
    study, series = generate_uid(), generate_uid()
    files = [save(ct_slice(study, series, i), tmp_path / "in" / f"{i}.dcm") for i in range(n)]
    assert storescu(node.port, *files).returncode == 0
    assert wait_for(lambda: (s := node.index.study(study)) is not None and s.state != RECEIVING, 20)
    return study, series


def test_images_deleted_after_delivery_and_late_instance_reopens(tmp_path):
    config = make_config(tmp_path, stability={"quiet_seconds": 0.3, "after_release_seconds": 0})
    with running_node(config, workers=()) as node:
        study, series = _received(tmp_path, node, 5)
        claim = node.index.claim_next_complete("test")
        assert claim is not None
        node.index.record_result(study, claim.revision, "m", "negative", {"negative": 1.0})
        assert node.index.finish_study(study, claim.revision, ANALYSED)
        spooled = [i.path for i in node.index.instances(study)]
        assert len(spooled) == 5 and all(p.is_file() for p in spooled)

        row = node.outbox.enqueue("dicom", "pacs", "1.2.3.4", "/nowhere", study_uid=study)
        later = {"now": time.time() + 4 * DAY}
        retention = Retention(node.index, node.spool, _OutboxDelivery(node.outbox), keep_seconds=3 * DAY,
                              clock=lambda: later["now"])
        assert Retention(node.index, node.spool, _OutboxDelivery(node.outbox), keep_seconds=3 * DAY
                         ).run_once() == 0                      # too recent
        assert retention.run_once() == 0                        # old enough, but not yet delivered
        assert all(p.is_file() for p in spooled)
        node.outbox.mark_sent(row)
        assert retention.run_once() == 1
        assert not any(p.exists() for p in spooled)
        assert node.index.instances(study) == []
        s = node.index.study(study)
        assert s.state == ANALYSED and s.purged_at is not None
        assert [r.category for r in node.index.results(study)] == ["negative"]   # results stay
        (status,) = study_status(config)
        assert status["images_deleted_at"] == s.purged_at and status["category"] == "negative"

        late = save(ct_slice(study, series, 9), tmp_path / "late" / "9.dcm")
        assert storescu(node.port, late).returncode == 0
        assert node.scp.flush_index(10)  # the rows follow the association's end
        s = node.index.study(study)
        assert (s.state, s.revision, s.instance_count) == (RECEIVING, 2, 1)
        (kept,) = node.index.instances(study)
        assert kept.path.is_file() and kept.revision == 2
        assert retention.run_once() == 0                        # receiving again: nothing to delete


def test_orphans_of_a_crash_during_deletion_are_removed_not_reindexed(tmp_path):
    config = make_config(tmp_path, stability={"quiet_seconds": 0.3, "after_release_seconds": 0})
    with running_node(config, workers=()) as node:
        study, _ = _received(tmp_path, node, 3)
        claim = node.index.claim_next_complete("test")
        assert node.index.finish_study(study, claim.revision, ANALYSED)
        paths = [i.path for i in node.index.instances(study)]
        # A crash right after the transaction: rows gone and time recorded, files still there.
        time.sleep(0.01)
        purged = node.index.purge_instances(study, claim.revision)
        assert purged is not None
        for p in paths:
            os.utime(p, (purged[0] - 1, purged[0] - 1))
        assert remove_purged_orphans(node.index, node.spool) == 3
        assert not any(p.exists() for p in paths)
        assert reconcile(node.index, node.spool) == 0
        assert node.index.study(study).state == ANALYSED


def test_retention_settings_validate():
    from aenode.config import Config

    c = Config.model_validate({"retention": {"keep_days": 7, "interval_seconds": 60}})
    assert c.retention.keep_days == 7 and c.retention.enabled
    try:
        Config.model_validate({"retention": {"keep_days": 0}})
    except ValueError as exc:
        assert "retention.keep_days" in str(exc) or "keep_days" in str(exc)
    else:
        raise AssertionError("keep_days = 0 must be refused")
    assert isinstance(Outbox, type)
