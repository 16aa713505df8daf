"""ONNX Runtime plumbing shared by the models and the preprocessing graph: which execution
providers to ask for, and ONNX Runtime's own messages routed into the node's log."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from aenode.logs import get_logger

log = get_logger("aenode.infer")

_PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def onnxruntime_messages(model: str) -> Iterator[None]:
    """Route what ONNX Runtime's C++ core prints on stderr into the node's JSON log.

    ONNX Runtime's Python API offers no logging callback, and its warnings (provider
    fall-backs, CUDA start-up) go straight to file descriptor 2, where they would break
    the JSON-lines log.  So while a session is created or first run, fd 2 points at a
    temporary file whose lines are then logged as ``onnxruntime_message`` events.
    """
    with _stderr_lock, tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.warning("onnxruntime_message", model=model, message=line.strip()[:2000])


def resolve_providers(wanted: list[str], device_id: int = 0) -> list[Any]:
    """ONNX Runtime provider list for configured names, dropping (with a warning) those
    this installation lacks; CPU is always the last resort."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    out: list[Any] = []
    for name in wanted:
        ort_name = _PROVIDER_NAMES[name]
        if ort_name not in available:
            log.warning("execution_provider_unavailable", provider=name,
                        fallback="cpu", available=sorted(available))
            continue
        out.append((ort_name, {"device_id": device_id}) if name == "cuda" else ort_name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out
