"""The Orthanc peer lives in :mod:`aenode.peers.orthanc` (the demo starts it too)."""

from aenode.peers.orthanc import Orthanc, free_port  # noqa: F401
