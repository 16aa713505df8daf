"""A real ``aenode serve`` subprocess for attack tests and benchmarks, and how to watch it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Tight bounds so that the attack tests finish in seconds; the defaults are tested apart.
TEST_LIMITS = {
    "associate_timeout_seconds": 1.0,
    "pdu_timeout_seconds": 1.0,
    "message_timeout_seconds": 2.0,
    "idle_timeout_seconds": 5.0,
    "max_pending_connections": 16,
    "max_connections_per_peer": 4,
    "max_instance_bytes": 8 * 1024 * 1024,
    "max_rows": 4096,
    "max_columns": 4096,
    "max_frames": 64,
    "max_decoded_instance_bytes": 64 * 1024 * 1024,
}


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v) + '"'


def write_config(path: Path, port: int, data_dir: Path, limits: dict[str, object] | None = None,
                 max_associations: int = 8) -> Path:
    text = (f'[node]\nae_title = "AENODE"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data_dir}"\n'
            f'max_associations = {max_associations}\n'
            '[stability]\nquiet_seconds = 2.0\nafter_release_seconds = 0.5\n'
            '[web]\nenabled = false\n')
    if limits:
        text += "[limits]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in limits.items())
    path.write_text(text)
    return path


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux clear_refs 5); False when not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def tmp_files(self) -> list[Path]:
        tmp = self.data_dir / "spool" / ".tmp"
        return list(tmp.iterdir()) if tmp.is_dir() else []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def start(config: Path, port: int, data_dir: Path, log: Path, echo, timeout: float = 60) -> Served:
    """``python -m aenode serve --config FILE``; returns once C-ECHO answers."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(config)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
    served = Served(proc, port, data_dir, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"aenode serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        # node_started: every worker is up (model loading captures stderr for a while)
        if '"node_started"' in served.log_text() and echo(port).returncode == 0:
            return served
        time.sleep(0.2)
    served.stop()
    raise RuntimeError("aenode serve did not answer C-ECHO in time")
