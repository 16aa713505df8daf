"""The durable spool: one DICOM file per SOP instance under the data directory.

Layout: ``<data_dir>/spool/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, built only
from validated UIDs.  Received instances are made durable in the receive journal first
(``aenode/store/journal.py``) and written here after the response without a sync
(:meth:`Spool.create_new`, :meth:`Spool.place`); the journal keeps them until one sync of
the file system made the files durable.  The fallback path, and :meth:`Spool.write_bytes`,
write to ``<data_dir>/spool/.tmp`` and make the file durable with fsync(file), rename
(atomic replace of an earlier copy of the same instance) and fsync(directory) before the
sender hears "success".  Directory syncs are
coalesced (group commit): a thread that renamed into a folder waits for one fsync of that
folder that *started after* its rename; concurrent associations writing the same series
share one directory sync instead of queueing one each.

A spool shared by several nodes (``data_dir`` on a network file system, with
``[database] url``): each node writes its temporary files into its own folder,
``.tmp/<node>``, and cleans only that one at start, so a starting node never removes
another's files in flight; every temporary name is unique per host, process and thread,
and the final rename is atomic, so two nodes storing the same instance at once leave
one whole copy (the last one), never a mix.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from aenode.store.uids import is_valid_uid

TMP_NAME = ".tmp"
JOURNAL_NAME = "journal"    # <data_dir>/journal: receive journal segments (aenode/store/journal.py)

# Test hook: called with the path about to be committed; may raise OSError (e.g. ENOSPC).
write_hook = None


def writer_id() -> str:
    """Unique among the writers of a shared spool (and its journal): host, process, thread."""
    return f"{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}"


class UnsafePath(ValueError):
    """A UID that is not a valid UID was about to become a path."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Coalesced:
    """Group commit of one directory's fsync.

    Each caller takes a ticket after its rename; an fsync covers every ticket issued
    before it started.  A caller whose ticket is covered by a finished fsync returns
    without syncing; otherwise it waits for the one in progress or runs the next one."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.issued = 0
        self.done = 0
        self.busy = False
        self.users = 0

    def sync(self, directory: Path) -> None:
        with self.cond:
            self.issued += 1
            mine = self.issued
            while self.done < mine and self.busy:
                self.cond.wait()
            if self.done >= mine:
                return
            self.busy = True
            covers = self.issued
        try:
            fsync_dir(directory)
        except BaseException:
            with self.cond:
                self.busy = False
                self.cond.notify_all()  # the others try themselves
            raise
        with self.cond:
            self.done = max(self.done, covers)
            self.busy = False
            self.cond.notify_all()


class Spool:
    def __init__(self, data_dir: Path, node: str | None = None, slot: int = 0):
        """``node``: this node's identity when the spool is shared by several nodes;
        ``slot``: the receive process (``[workers] receive``).  Each gets a temporary folder
        of its own, so that one starting up never removes another's files in progress."""
        self.data_dir = Path(data_dir).resolve()
        self.root = self.data_dir / "spool"
        self.tmp_dir = self.root / TMP_NAME
        # Outside the spool, so that the spool holds instance files only; shared by the
        # nodes of a shared data_dir (segment names are unique per host and process).
        self.journal_dir = self.data_dir / JOURNAL_NAME
        if node:
            self.tmp_dir = self.tmp_dir / re.sub(r"[^A-Za-z0-9._-]", "_", node)
        if slot:
            self.tmp_dir = self.tmp_dir / f"r{slot}"
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._dir_syncs: dict[Path, _Coalesced] = {}

    def prepare(self) -> None:
        """Create the folders and remove temporary files left by a crash."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_dir():
                continue  # another receive process's folder
            try:
                leftover.unlink()
            except OSError:
                pass
        fsync_dir(self.root)
        fsync_dir(self.data_dir)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_valid_uid(uid):
                raise UnsafePath("invalid UID")
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.data_dir))

    def absolute(self, rel: str) -> Path:
        return self.data_dir / rel

    def forget_dir(self, directory: Path) -> None:
        """Folders under ``directory`` may be gone (retention removed them)."""
        with self._lock:
            self._known_dirs = {d for d in self._known_dirs if not d.is_relative_to(directory)}

    def place(self, tmp_path: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Rename ``tmp_path`` (in :attr:`tmp_dir`) into place as the instance's spool file,
        without any sync: for a file whose durability the receive journal guarantees until
        one sync of the file system (``aenode/store/journal.py``).  Atomic replace, so a
        reader sees the old copy or the new one, never a mix."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        if write_hook is not None:
            write_hook(final)
        self._ensure_dir(final.parent)
        try:
            os.replace(tmp_path, final)
        except FileNotFoundError:
            self.forget_dir(final.parent)  # retention removed the folder since it was made
            self._ensure_dir(final.parent)
            os.replace(tmp_path, final)
        return final

    def create_new(self, study_uid: str, series_uid: str, sop_uid: str) -> tuple[int, Path] | None:
        """Open the instance's spool file for writing if it does not exist yet (None: it
        does; write a temporary file and :meth:`place` it, an atomic replace).  For the
        receive journal's materialiser: the first copy of an instance is written in place,
        one rename fewer; nothing reads it before its index row exists, and a crash in the
        middle is repaired by the journal's replay (``aenode/store/journal.py``)."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        if write_hook is not None:
            write_hook(final)
        self._ensure_dir(final.parent)
        for _attempt in range(2):
            try:
                return os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), final
            except FileExistsError:
                return None
            except FileNotFoundError:
                self.forget_dir(final.parent)  # retention removed the folder since it was made
                self._ensure_dir(final.parent)
        return None

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._lock:
            created = []
            d = directory
            while not d.exists():
                created.append(d)
                d = d.parent
            for c in reversed(created):
                try:
                    c.mkdir()
                except FileExistsError:
                    pass
                fsync_dir(c.parent)
            self._known_dirs.add(directory)

    def commit(self, tmp_path: Path, study_uid: str, series_uid: str, sop_uid: str,
               fd: int | None = None) -> Path:
        """Make ``tmp_path`` durable as the instance's spool file and return its path.

        ``fd``: an open descriptor of ``tmp_path`` to fsync (else the file is opened).
        Raises OSError (ENOSPC and friends) or UnsafePath; the temporary file is left
        for the caller to remove.
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        if write_hook is not None:
            write_hook(final)
        if fd is None:
            fd2 = os.open(tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd2)
            finally:
                os.close(fd2)
        else:
            os.fsync(fd)
        self._ensure_dir(final.parent)
        try:
            try:
                os.replace(tmp_path, final)
            except FileNotFoundError:
                # Retention removed the (empty) folder since it was made: make it again.
                self.forget_dir(final.parent)
                self._ensure_dir(final.parent)
                os.replace(tmp_path, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The temporary file lives on another file system: copy next to the target.
            staged = final.with_name(f"{final.name}.{writer_id()}.part")  # never another node's
            shutil.copyfile(tmp_path, staged)
            fd3 = os.open(staged, os.O_RDONLY)
            try:
                os.fsync(fd3)
            finally:
                os.close(fd3)
            os.replace(staged, final)
            os.unlink(tmp_path)
        self._sync_dir(final.parent)
        return final

    def _sync_dir(self, directory: Path) -> None:
        with self._lock:
            group = self._dir_syncs.get(directory)
            if group is None:
                group = self._dir_syncs[directory] = _Coalesced()
            group.users += 1
        try:
            group.sync(directory)
        finally:
            with self._lock:
                group.users -= 1
                if group.users == 0:
                    self._dir_syncs.pop(directory, None)

    def tmp_path(self, sop_uid: str) -> Path:
        """A temporary name for one instance in this writer's folder (never another node's)."""
        return self.tmp_dir / f"{sop_uid}.{writer_id()}.part"

    def write_bytes(self, data: bytes, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Durably store an instance given as bytes (DICOM file format)."""
        self.path_for(study_uid, series_uid, sop_uid)  # validate before anything is written
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_path(sop_uid)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                return self.commit(tmp, study_uid, series_uid, sop_uid, fd=fh.fileno())
        finally:
            if tmp.exists():
                tmp.unlink()

    def files(self) -> Iterator[Path]:
        """Every committed spool file (for start-up reconciliation)."""
        if not self.root.exists():
            return
        for study in self.root.iterdir():
            if study.name == TMP_NAME or not study.is_dir():
                continue
            for series in study.iterdir():
                if not series.is_dir():
                    continue
                for f in series.iterdir():
                    if f.suffix == ".dcm":
                        yield f
