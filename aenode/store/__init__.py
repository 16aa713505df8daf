"""Durable spool, SQLite index and study stabiliser (issue 3).

The spool holds every received instance as a DICOM file under the data directory; the
index describes them and carries each study's processing state, which later stages
advance through :class:`aenode.store.index.Index`.
"""
