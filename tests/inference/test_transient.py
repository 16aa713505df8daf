"""A short disk-full episode between analysis and publishing loses nothing (issue 15, 6).

The data directory is a real, small tmpfs.  The publisher fills it just before the SR/SC
are written, as a disk would fill at the worst moment: the study must wait and retry,
record no result (so no alert) until its SR/SC exist, and publish once space is back.
"""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest

from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import OutboxPublisher
from aenode.infer.analyse import ModelOutcome
from aenode.infer.engine import Model
from aenode.infer.worker import AnalysisWorker
from aenode.load.volume import Volume
from aenode.store.index import ANALYSED, ANALYSING, COMPLETE, ERROR, Index
from aenode.store.meta import read_meta


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0  # worker (monotonic) and index (wall) clocks alike

    def __call__(self) -> float:
        return self.now


class _FillDiskFirst:
    """The real publisher, but the disk fills up right before the first publish."""

    def __init__(self, inner: OutboxPublisher, ballast_dir) -> None:
        self.inner = inner
        self.ballast = ballast_dir / "ballast"
        self.filled = False

    def publish(self, study_uid: str, revision: int, model: Model, outcome: ModelOutcome,
                volume: Volume, parts: tuple[str, ...] = ("sr", "sc", "seg")) -> list[str]:
        if not self.filled:
            self.filled = True
            with open(self.ballast, "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * (1 << 20))
                        fh.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        return self.inner.publish(study_uid, revision, model, outcome, volume, parts=parts)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(mnt)], capture_output=True)
    assert r.returncode == 0, f"this test needs root to mount a tmpfs: {r.stderr!r}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_between_analysis_and_publishing_retries_and_publishes(heldout_studies, models, small_disk):
    src = next(s for s in heldout_studies if s[0] == "typical")[2]
    data = small_disk / "data"
    series = max((p for p in src.iterdir() if p.is_dir() and p.name != "ground_truth"),
                 key=lambda p: len(list(p.glob("*.dcm"))))
    shutil.copytree(series, data / "spool" / "s")
    config = Config.model_validate({"node": {"data_dir": str(data)},
                                    "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                      "port": 1}]})
    clock = _Clock()
    index = Index.for_data_dir(data, clock=clock)
    outbox = Outbox.for_config(config)
    try:
        study_uid = ""
        for f in sorted((data / "spool").rglob("*.dcm")):
            meta = read_meta(f)
            study_uid = meta.study_uid
            index.record_instance(meta, f, f.stat().st_size, "CT1", received_at=clock.now)
        assert index.mark_complete(study_uid, clock.now)
        publisher = _FillDiskFirst(OutboxPublisher(config, outbox), small_disk)
        worker = AnalysisWorker(config, index, models, publisher, retry_base_seconds=30.0, clock=clock)

        claim = index.claim_next_complete("w")
        assert claim is not None
        assert worker.process(claim.study_uid, claim.revision) == COMPLETE  # waits, not error
        assert index.study(study_uid).state == ANALYSING   # still claimed; a restart re-queues it
        assert index.results(study_uid) == []          # no result, so no alert, without its SR/SC
        assert outbox.rows() == []
        assert worker.next_due() is None               # it waits for its retry time

        (small_disk / "ballast").unlink()               # space is back
        clock.now += 31
        assert worker.next_due() == (study_uid, claim.revision)
        assert worker.process(study_uid, claim.revision) == ANALYSED
        results = {r.model: r for r in index.results(study_uid)}
        assert results["covid-typicality"].category == "typical"
        sr_sc = results["covid-typicality"].detail["result_uids"]
        assert len(sr_sc) == 3  # SR, SC and the SEG (the manifest's [outputs] seg = true)
        queued = {r.object_id for r in outbox.rows() if r.destination == "pacs"}
        assert set(sr_sc) <= queued
        assert index.study(study_uid).state == ANALYSED
    finally:
        outbox.close()
        index.close()


def test_failed_studies_can_be_requeued(tmp_path):
    from aenode.store.meta import InstanceHeader

    index = Index.for_data_dir(tmp_path)
    try:
        h = InstanceHeader(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
        index.record_instance(h, tmp_path / "x.dcm", 1, "CT1", received_at=1.0)
        assert index.mark_complete("1.2.3", 1.0)
        claim = index.claim_next_complete("w")
        assert claim is not None
        assert index.finish_study("1.2.3", claim.revision, ERROR, "decoder ran out of memory")
        assert index.requeue_failed() == 1
        assert index.study("1.2.3").state == COMPLETE
        assert index.claim_next_complete("w") is not None
    finally:
        index.close()
