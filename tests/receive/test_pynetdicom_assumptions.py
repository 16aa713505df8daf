"""Fails, naming the assumption, when a pynetdicom upgrade breaks what the node relies on.

aenode/receive/_pynetdicom.py is the only module that touches pynetdicom internals; its
docstring lists each assumption by name.  A failure here means: read that entry, adapt
_pynetdicom.py to the new pynetdicom (or keep pynetdicom inside TESTED_RANGE).
"""

from __future__ import annotations

import socket

import pytest
from packaging.specifiers import SpecifierSet
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider

from aenode.receive import _pynetdicom

from .dicomgen import ct_slice


def _explain(broken: list[_pynetdicom.Broken]) -> str:
    return ("\n".join(str(b) for b in broken)
            + f"\ninstalled pynetdicom {_pynetdicom.installed_version()}, tested range {_pynetdicom.TESTED_RANGE}:"
              " see the assumption in aenode/receive/_pynetdicom.py's docstring, adapt that module or pin"
              " pynetdicom")


def test_installed_pynetdicom_is_in_the_tested_range():
    version = _pynetdicom.installed_version()
    spec = SpecifierSet(_pynetdicom.TESTED_RANGE.removeprefix("pynetdicom"))
    assert version in spec, (f"pynetdicom {version} is outside the tested range {_pynetdicom.TESTED_RANGE};"
                             " run this file, then widen TESTED_RANGE and the pin in pyproject.toml")


@pytest.mark.parametrize("assumption", _pynetdicom.ASSUMPTIONS)
def test_assumption_holds(assumption):
    assert assumption in (_pynetdicom.__doc__ or ""), f"'{assumption}' is not documented in _pynetdicom.py"
    broken = [b for b in _pynetdicom.check_assumptions() if b.assumption == assumption]
    assert not broken, _explain(broken)


def test_every_reported_assumption_is_a_documented_one():
    assert {b.assumption for b in _pynetdicom.check_assumptions()} <= set(_pynetdicom.ASSUMPTIONS)


def test_the_check_notices_a_broken_internal(monkeypatch):
    """The checks are not vacuous: a changed internal is reported under its name."""
    def _read_pdu_data(self):  # a pynetdicom that reads PDUs some other way
        raise NotImplementedError

    monkeypatch.setattr(DULServiceProvider, "_read_pdu_data", _read_pdu_data)
    broken = _pynetdicom.check_assumptions()
    assert [b.assumption for b in broken] == ["dul_read_hook"]
    assert "dul_read_hook" in str(broken[0])


def test_fast_paths_are_taken_end_to_end(node):
    """Behaviour, not just shape: a real association goes through every hook."""
    before = dict(_pynetdicom.counters)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AENODE")
    assert assoc.is_established
    try:
        for _ in range(5):
            assert assoc.send_c_echo().Status == 0
        study = generate_uid()
        assert assoc.send_c_store(ct_slice(study, generate_uid(), 0)).Status == 0
        (conn,) = [c for c in node.scp.server.open_connections() if c.assoc is not None]
        assert isinstance(conn.assoc.dul, _pynetdicom.FastDUL)
        assert isinstance(_pynetdicom.raw_socket(conn.assoc), socket.socket)
    finally:
        assoc.release()
    after = _pynetdicom.counters
    for key in ("dul_idle_waits", "association_idle_waits", "spool_temp_files", "bounded_reads"):
        assert after[key] > before.get(key, 0), f"hook '{key}' was never used: see _pynetdicom.py"
    assert len(node.index.instances(study)) == 1
    assert not list(node.spool.tmp_dir.iterdir())
