"""The temporary file one received C-STORE data set is streamed into.

pynetdicom writes the P-DATA fragments of a C-STORE data set to a "named temporary file"
(see ``_pynetdicom.py``); the node gives it a :class:`SpoolTempFile` in the spool's
``.tmp`` folder instead, so that the committed instance is one rename away.  It is written
from the network thread, so errors are remembered rather than raised: the C-STORE handler
answers 0xA700 (disk full, I/O error) or 0xC000 (``max_instance_bytes`` exceeded) and the
association carries on.  Past ``max_instance_bytes`` nothing more is written.

Every file is registered with its connection, which closes and removes any file still open
when the connection ends (a peer that drops in the middle of a C-STORE leaks nothing).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class InstanceTooLarge(Exception):
    """The data set exceeded ``max_instance_bytes`` (the rest was discarded)."""


class SpoolTempFile:
    """Quacks like the ``NamedTemporaryFile`` pynetdicom writes a received data set to."""

    def __init__(self, directory: Path, max_bytes: int, suffix: str = ".dcm"):
        fd, name = tempfile.mkstemp(suffix=suffix, dir=str(directory))
        self.name = name
        self._fd = fd
        self.max_bytes = max_bytes
        self.error: OSError | InstanceTooLarge | None = None
        self.size = 0  # bytes received (also those discarded past the limit)
        self.file = self  # pynetdicom calls .file.flush()
        self.closed = False

    @property
    def path(self) -> Path:
        return Path(self.name)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.size += n
        if self.error is None:
            if self.size > self.max_bytes:
                self.error = InstanceTooLarge()
            else:
                try:
                    with memoryview(data) as view:
                        while view:
                            written = os.write(self._fd, view)
                            view = view[written:]
                except OSError as exc:
                    self.error = exc
        return n

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.size

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def discard(self) -> None:
        """Close and remove the file unless it was already closed (committed or handled)."""
        if self.closed:
            return
        self.close()
        try:
            os.unlink(self.name)
        except OSError:
            pass
