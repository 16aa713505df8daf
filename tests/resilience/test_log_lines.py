"""The node's processes share one stderr: every JSON log line must arrive whole.

Found by the kill loop: with ``aenode serve`` running a process per stage, lines of two
processes were glued together (``{...}{...}`` and then an empty line), which a log
shipper drops or misparses.  A record must reach the stream in one ``write`` (a pipe
write of up to PIPE_BUF bytes is atomic), not as the message and then its newline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_log_lines_stay_whole_across_processes():
    writers, lines = 4, 2000
    proc = subprocess.run([sys.executable, "-m", "tests.resilience.log_writers", str(writers), str(lines)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = proc.stderr.decode().splitlines()
    broken = []
    for line in got:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line)
    assert not broken, f"{len(broken)} of {len(got)} log lines not one JSON object each, e.g. {broken[0][:200]!r}"
    assert len(got) == writers * lines
