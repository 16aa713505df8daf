from __future__ import annotations

import shutil

import pytest

from tests.orthanc import Orthanc, free_port

NODE_AE = "AENODE"


@pytest.fixture(autouse=True)
def _logging_not_bound_to_captured_streams():
    """``aenode_main`` configures logging onto the (captured) stderr of one test; undo
    that afterwards so later tests do not write to a closed stream."""
    yield
    import logging

    import structlog

    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


@pytest.fixture(scope="module")
def node_port():
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, node_port):
    assert shutil.which("Orthanc") or __import__("os").path.exists("/usr/sbin/Orthanc"), "Orthanc is not installed"
    o = Orthanc(tmp_path_factory.mktemp("orthanc"),
                modalities={"aenode": [NODE_AE, "127.0.0.1", node_port]}).start()
    yield o
    o.stop()
