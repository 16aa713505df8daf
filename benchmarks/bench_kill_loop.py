"""kill -9 iterations and losses (issue 15's figure; target: >= 50 kills, 0 losses).

Runs the same loop as ``tests/resilience/test_kill_loop.py`` (``aenode serve`` as a
subprocess, DCMTK storescu, Orthanc, the webhook receiver; SIGKILL at random moments of
ingest, analysis, delivery and alerting), then lets the node settle and checks every
acknowledged instance, the SR/SC in Orthanc and the webhook alerts.  Prints the machine,
the seed and one line of figures; each loss on a line of its own.  Exit status 1 on any loss.

    python benchmarks/bench_kill_loop.py [--kills 50] [--studies 14] [--late-chunks 2] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402
from tests.resilience.harness import KillLoop  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--studies", type=int, default=14)
    ap.add_argument("--late-chunks", type=int, default=2, help="runs of late slices per study (new revisions)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory(prefix="aenode-kill-") as tmp, \
            KillLoop(Path(tmp), seed=seed, studies=args.studies, late_chunks=args.late_chunks) as loop:
        figures = loop.run(args.kills)
        losses = loop.check()
        print(figures.line())
        for line in losses:
            print("loss:", line)
    return 1 if losses else 0


if __name__ == "__main__":
    sys.exit(main())
