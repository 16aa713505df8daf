"""C-STORE to PACS over DICOM TLS, against a real Orthanc with ``DicomTlsEnabled``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from aenode.cli import main as aenode_main
from aenode.config import load_config
from aenode.deliver.destinations import probe, transport_warnings
from tests.deliver.conftest import NODE_AE
from tests.deliver.pki import PKI, make_pki
from tests.deliver.test_delivery import drain
from tests.deliver.test_dicomweb import StowServer, enqueue_result, study_instances, write_config
from tests.orthanc import Orthanc


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_pacs(tmp_path_factory, pki):
    o = Orthanc(tmp_path_factory.mktemp("tlspacs"), dicom_tls=(pki.server_cert, pki.server_key, pki.ca)).start()
    yield o
    o.stop()


def tls_config(tmp_path: Path, pacs: Orthanc, tls: dict[str, object] | None, name: str = "pacs"):
    lines = [f'[node]\ndata_dir = "{tmp_path / "data"}"\nae_title = "{NODE_AE}"\n',
             "[delivery]\nmax_attempts = 2\nbackoff_base_seconds = 0.05\nbackoff_cap_seconds = 0.1\n"
             "timeout_seconds = 5\n",
             f'[[destinations]]\nname = "{name}"\nae_title = "{pacs.aet}"\nhost = "127.0.0.1"\n'
             f"port = {pacs.dicom_port}"]
    if tls is not None:
        lines.append("[destinations.tls]")
        for k, v in tls.items():
            lines.append(f"{k} = " + ("true" if v is True else "false" if v is False else f'"{v}"'))
    tmp_path.mkdir(parents=True, exist_ok=True)
    toml = tmp_path / "aenode.toml"
    toml.write_text("\n".join(lines) + "\n")
    return load_config(toml), toml


def test_cstore_over_tls_verified(tmp_path, tls_pacs, pki, capsys):
    config, toml = tls_config(tmp_path, tls_pacs, {"ca_file": pki.ca})
    assert transport_warnings(config) == []
    assert probe(config, config.destinations[0], 5) == (True, "ok")
    study, paths, ids = enqueue_result(config)
    box = drain(config)
    assert [box.get(i).state for i in ids] == ["sent", "sent"], [box.get(i).last_error for i in ids]
    assert {t["SOPInstanceUID"] for t in study_instances(tls_pacs, study)} == \
        {str(dcmread(p).SOPInstanceUID) for p in paths}
    assert aenode_main(["echo", "--config", str(toml), "--timeout", "5"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        f"pacs\t{tls_pacs.aet}@127.0.0.1:{tls_pacs.dicom_port} (TLS)\tOK")


def test_client_certificate_for_a_pacs_that_requires_one(tmp_path, pki):
    pacs = Orthanc(tmp_path / "pacs", dicom_tls=(pki.server_cert, pki.server_key, pki.ca),
                   extra={"DicomTlsRemoteCertificateRequired": True}).start()
    try:
        config, _ = tls_config(tmp_path / "anon", pacs, {"ca_file": pki.ca})
        assert probe(config, config.destinations[0], 5)[0] is False  # no client certificate: refused
        config, _ = tls_config(tmp_path / "cert", pacs, {"ca_file": pki.ca, "cert_file": pki.client_cert,
                                                         "key_file": pki.client_key})
        study, _, ids = enqueue_result(config)
        box = drain(config)
        assert [box.get(i).state for i in ids] == ["sent", "sent"], [box.get(i).last_error for i in ids]
        assert len(study_instances(pacs, study)) == 2
    finally:
        pacs.stop()


def test_untrusted_server_certificate_is_refused(tmp_path, tls_pacs, pki):
    config, _ = tls_config(tmp_path, tls_pacs, {"ca_file": pki.other_ca})
    ok, _ = probe(config, config.destinations[0], 5)
    assert not ok
    study, _, ids = enqueue_result(config)
    box = drain(config)
    assert all(box.get(i).state == "failed" for i in ids)  # retried (2 attempts), never sent
    assert "over TLS" in (box.get(ids[0]).last_error or "")
    assert study_instances(tls_pacs, study) == []
    # verify = false: encrypted but unauthenticated; delivers, and config check names it
    config, _ = tls_config(tmp_path / "nv", tls_pacs, {"verify": False})
    assert probe(config, config.destinations[0], 5) == (True, "ok")
    [warning] = transport_warnings(config)
    assert "verify = false" in warning and "pacs" in warning


def test_plain_client_cannot_talk_to_a_tls_pacs(tmp_path, tls_pacs):
    config, _ = tls_config(tmp_path, tls_pacs, None)
    assert probe(config, config.destinations[0], 3)[0] is False
    [warning] = transport_warnings(config)
    assert "without TLS" in warning


def test_stow_over_https_verifies_the_server(tmp_path, pki):
    """Debian's Orthanc 1.10 crashes (SIGSEGV) on its first HTTPS connection with
    ``SslEnabled``, so the HTTPS peer here is the loopback STOW server wrapped in TLS."""
    srv = StowServer([], tls=(pki.server_cert, pki.server_key))
    try:
        assert srv.url.startswith("https://")
        dest = {"type": "dicomweb", "name": "web", "url": srv.url, "token": "canary-token"}
        config, _ = write_config(tmp_path / "untrusted", {**dest, "ca_file": str(pki.other_ca)}, max_attempts=2)
        study, _, ids = enqueue_result(config)
        box = drain(config)
        assert all(box.get(i).state == "failed" for i in ids)
        assert "CERTIFICATE_VERIFY_FAILED" in (box.get(ids[0]).last_error or "")
        assert srv.seen == []  # nothing (not even the token) reached an unverified server
        config, _ = write_config(tmp_path / "trusted", {**dest, "ca_file": str(pki.ca)})
        assert transport_warnings(config) == []
        study, _, ids = enqueue_result(config)
        box = drain(config)
        assert [box.get(i).state for i in ids] == ["sent", "sent"]
        assert [auth for auth, _, _ in srv.seen] == ["Bearer canary-token"]
    finally:
        srv.close()
