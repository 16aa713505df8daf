"""Child for ``test_log_lines_stay_whole``: several forked processes log at once.

``aenode serve`` forks a process per stage from its supervisor and they all write JSON
log lines to the one inherited stderr.  ``python -m tests.resilience.log_writers N LINES``
forks N writers that each log LINES events through :func:`aenode.logs.configure_logging`.
"""

from __future__ import annotations

import os
import sys

from aenode.logs import configure_logging, get_logger


def main(writers: int, lines: int) -> int:
    configure_logging("INFO", json=True)
    log = get_logger("aenode.test")
    pids = []
    for w in range(writers):
        pid = os.fork()
        if pid == 0:
            for n in range(lines):
                log.info("line_written", writer=w, n=n)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
