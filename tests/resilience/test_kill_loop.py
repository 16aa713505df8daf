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

import os
import random
from pathlib import Path

import pytest

from tests.resilience.harness import KillLoop


def _seed() -> int:
    return int(os.environ.get("AENODE_KILL_SEED") or random.SystemRandom().randrange(1 << 31))


def _run(tmp_path: Path, *, kills: int, studies: int, late_chunks: int) -> None:
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


def test_kill_loop_short(tmp_path):
    """About five kills: the version every test run includes."""
    _run(tmp_path, kills=5, studies=2, late_chunks=1)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill_loop_long(tmp_path):
    """At least 50 kills across the four phases (``-m slow``)."""
    _run(tmp_path, kills=50, studies=12, late_chunks=2)
