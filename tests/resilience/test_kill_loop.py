"""kill -9 at random moments of ingest, analysis, delivery and alerting (issue 15).

Real peers throughout: ``aenode serve`` as a subprocess, DCMTK ``storescu``, Orthanc,
the webhook receiver.  After the loop and a final settling run:

- every instance storescu got "success" for is in the spool, indexed, with its pixels;
- Orthanc holds exactly one SR and one SC per (study, model) for the newest revision,
  and no result object with UIDs the node could not have derived (a resend after a
  crash overwrites, it does not copy);
- every study alerting on the dashboard had its webhook delivered at least once, and
  all deliveries of one result revision carry one Idempotency-Key.

The seed is printed (and can be fixed with ``AENODE_KILL_SEED``) so a failing run can be
replayed; the kill moments depend on timing too, so a replay is close, not identical.
"""

from __future__ import annotations

import io
import json
import os
import random
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from aenode.report.publish import results_path
from aenode.store.index import Index
from tests.resilience.harness import KillLoop


def _seed() -> int:
    return int(os.environ.get("AENODE_KILL_SEED") or random.SystemRandom().randrange(1 << 31))


def _tamper_and_recheck(loop: KillLoop) -> None:
    """The checks can fail: a lost spool file, a second SR with new UIDs in the PACS and
    a webhook re-sent under another key are each reported."""
    index = Index.for_data_dir(loop.data_dir)
    try:
        uid = next(iter(loop.studies))
        victim = next(i for i in index.instances(uid) if i.sop_instance_uid in loop.acked[uid])
        study = index.study(uid)
        assert study is not None
        model = loop.model_names()[0]
    finally:
        index.close()
    assert victim.path is not None
    Path(victim.path).unlink()
    sr = dcmread(results_path(loop.data_dir, uid, model, study.revision) / "sr.dcm")
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    sr.save_as(buf)
    loop.orthanc.post("/instances", buf.getvalue())
    first = loop.webhook.accepted[0]
    req = urllib.request.Request(loop.webhook.url, data=first["body"], method="POST",
                                 headers={"Content-Type": "application/json", "Idempotency-Key": "0" * 32})
    urllib.request.urlopen(req, timeout=10).close()
    body = json.loads(first["body"])
    losses = loop.check()
    assert any(f"{victim.sop_instance_uid} of {uid} indexed but not in the spool" in x for x in losses), losses
    assert any(f"study {uid}: 1 result object(s) in Orthanc with unexpected UIDs" in x for x in losses), losses
    assert any("2 different Idempotency-Keys" in x and body["study"]["study_instance_uid"] in x
               for x in losses), losses


def _run(tmp_path: Path, *, kills: int, studies: int, late_chunks: int, tamper: bool = False) -> None:
    seed = _seed()
    print(f"AENODE_KILL_SEED={seed}", flush=True)
    with KillLoop(tmp_path, seed=seed, studies=studies, late_chunks=late_chunks) as loop:
        figures = loop.run(kills)
        losses = loop.check()
        print(figures.line(), flush=True)
        for line in losses:
            print("loss:", line, flush=True)
        assert figures.kills >= kills
        assert figures.acknowledged > 0 and loop.webhook.accepted, "the loop did no work: nothing to check"
        assert not losses, f"seed {seed}: {len(losses)} loss(es), first: {losses[0]}"
        if tamper:
            _tamper_and_recheck(loop)


def test_kill_loop_short(tmp_path):
    """About five kills: the version every test run includes."""
    _run(tmp_path, kills=5, studies=2, late_chunks=1, tamper=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill_loop_long(tmp_path):
    """At least 50 kills across the four phases (``-m slow``)."""
    _run(tmp_path, kills=50, studies=14, late_chunks=2)
