"""How every benchmark names the machine it ran on (figures mean little without it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from aenode.node import usable_cores


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """CPU model, core count and Python version, as printed at the top of each benchmark;
    a run confined to fewer cores (taskset, a container's cpuset) says so."""
    usable = usable_cores()  # what the node sizes itself from
    cores = f"{os.cpu_count()} cores" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} cores"
    return f"{cpu_name()}, {cores}, Python {platform.python_version()}"
