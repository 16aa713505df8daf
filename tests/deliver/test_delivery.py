"""Delivery to real peers: Orthanc (PACS) and DCMTK storescp (restricted transfer syntax)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from pydicom import dcmread

from aenode.cli import main as aenode_main
from aenode.config import parse_config
from aenode.deliver.dicom import Peer, echo
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import publish_result
from aenode.deliver.worker import DeliveryWorker
from tests.deliver.conftest import NODE_AE
from tests.orthanc import Orthanc, free_port
from tests.report.factory import make_input


def make_config(tmp_path: Path, dests: list[tuple[str, str, int]], **delivery):
    d = {"max_attempts": 50, "backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.5, "poll_seconds": 0.1,
         "timeout_seconds": 5}
    d.update(delivery)
    data = {"node": {"data_dir": str(tmp_path / "data"), "ae_title": NODE_AE},
            "destinations": [{"name": n, "ae_title": a, "host": "127.0.0.1", "port": p} for n, a, p in dests],
            "delivery": d}
    toml = [f'[node]\ndata_dir = "{tmp_path / "data"}"\nae_title = "{NODE_AE}"\n', "[delivery]"]
    toml += [f"{k} = {v}" for k, v in d.items()]
    for n, a, p in dests:
        toml.append(f'[[destinations]]\nname = "{n}"\nae_title = "{a}"\nhost = "127.0.0.1"\nport = {p}')
    (tmp_path / "aenode.toml").write_text("\n".join(toml) + "\n")
    return parse_config(data), tmp_path / "aenode.toml"


def drain(config, timeout=20.0) -> Outbox:
    """Run the worker until nothing is pending or sending (or timeout)."""
    box = Outbox.for_config(config)
    w = DeliveryWorker(config, None, outbox=box)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w.run_once()
        c = box.counts()
        if c["pending"] == 0 and c["sending"] == 0:
            break
        time.sleep(0.05)
    return box


def ours_in(orthanc: Orthanc, study_uid: str) -> list[dict]:
    return [t for t in orthanc.all_tags() if t.get("StudyInstanceUID") == study_uid]


def test_sr_and_sc_land_in_the_same_study(tmp_path, orthanc):
    config, _ = make_config(tmp_path, [("pacs", orthanc.aet, orthanc.dicom_port)])
    inp = make_input(n=20)
    paths = publish_result(config, inp)
    box = drain(config)
    assert box.counts()["sent"] == 2, box.rows()
    tags = ours_in(orthanc, inp.study_instance_uid)
    assert sorted(t["Modality"] for t in tags) == ["OT", "SR"]
    sr = next(t for t in tags if t["Modality"] == "SR")
    sc = next(t for t in tags if t["Modality"] == "OT")
    assert sr["SOPInstanceUID"] == dcmread(paths[0]).SOPInstanceUID
    assert sr["VerificationFlag"] == "UNVERIFIED"
    assert sr["SeriesDescription"].startswith("AI RESULT - NOT FOR DIAGNOSTIC USE")
    assert sc["BurnedInAnnotation"] == "YES" and sc["ImageType"].startswith("DERIVED\\SECONDARY")
    assert sr["SeriesInstanceUID"] != sc["SeriesInstanceUID"]
    studies = [s for s in orthanc.get("/studies?expand")
               if s["MainDicomTags"]["StudyInstanceUID"] == inp.study_instance_uid]
    assert len(studies) == 1 and len(studies[0]["Series"]) == 2
    assert box.summary_for_study(inp.study_instance_uid)["pacs"]["state"] == "sent"


def test_pacs_down_then_up_delivers_exactly_once(tmp_path):
    pacs = Orthanc(tmp_path / "pacs")  # configured but not running yet
    config, _ = make_config(tmp_path, [("pacs", pacs.aet, pacs.dicom_port)])
    inp = make_input(n=12)
    publish_result(config, inp)
    stop = threading.Event()
    worker = DeliveryWorker(config, None)
    t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    t.start()
    try:
        with Outbox.for_config(config) as box:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and min((r.attempts for r in box.rows()), default=0) < 2:
                time.sleep(0.05)
            rows = box.rows()
            assert all(r.state in ("pending", "sending") and r.attempts >= 2 for r in rows)
            assert all("association" in (r.last_error or "") for r in rows if r.state == "pending")
            pacs.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and box.counts()["sent"] < 2:
                time.sleep(0.05)
            assert box.counts()["sent"] == 2
        publish_result(config, inp)  # the analysis stage retries after a crash: no new rows
        # Bounded wait for "nothing more arrives": a new row would be sent at once (notify()
        # wakes the worker), well within 0.5 s.
        time.sleep(0.5)
        assert len(ours_in(pacs, inp.study_instance_uid)) == 2
        assert len(pacs.instances()) == 2
    finally:
        stop.set()
        t.join(timeout=5)
        pacs.stop()


def test_permanently_down_fails_then_retry_cli_delivers(tmp_path, capsys):
    pacs = Orthanc(tmp_path / "pacs")
    config, toml = make_config(tmp_path, [("pacs", pacs.aet, pacs.dicom_port)], max_attempts=3,
                               backoff_base_seconds=0.05, backoff_cap_seconds=0.1)
    inp = make_input(n=6, with_volume=False)
    publish_result(config, inp)
    box = drain(config)
    [row] = box.rows()
    assert row.state == "failed" and row.attempts == 3 and row.last_error
    assert box.summary_for_study(inp.study_instance_uid)["pacs"]["state"] == "failed"
    assert drain(config).get(row.id).state == "failed"  # terminal: the worker leaves it alone
    pacs.start()
    try:
        assert aenode_main(["retry", "--config", str(toml), str(row.id)]) == 0
        assert "requeued 1" in capsys.readouterr().out
        assert box.get(row.id).state == "pending"
        box = drain(config)
        assert box.get(row.id).state == "sent"
        assert len(ours_in(pacs, inp.study_instance_uid)) == 1
        assert aenode_main(["retry", "--config", str(toml), "--all"]) == 0  # nothing failed now
        assert "requeued 0" in capsys.readouterr().out
    finally:
        pacs.stop()


def test_transfer_syntax_fallback_to_implicit(tmp_path):
    port = free_port()
    out = tmp_path / "scp"
    out.mkdir()
    # DCMTK storescp accepting Implicit VR Little Endian only; our files are Explicit VR LE.
    proc = subprocess.Popen(["/usr/bin/storescp", "+xi", "-aet", "STRICT", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"TCP_NODELAY": "1"})
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not echo(Peer("STRICT", "127.0.0.1", port), NODE_AE, 2)[0]:
            time.sleep(0.1)
        config, _ = make_config(tmp_path, [("strict", "STRICT", port)])
        inp = make_input(n=8)
        paths = publish_result(config, inp)
        assert all(str(dcmread(p).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1" for p in paths)
        box = drain(config)
        assert box.counts()["sent"] == 2, [r.last_error for r in box.rows()]
        got = sorted(out.iterdir())
        assert len(got) == 2
        for f in got:
            ds = dcmread(f)
            assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2"  # received as implicit
        assert {str(dcmread(f).SOPInstanceUID) for f in got} == {str(dcmread(p).SOPInstanceUID) for p in paths}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_echo_cli(tmp_path, orthanc, capsys):
    dead = free_port()
    _, toml = make_config(tmp_path, [("pacs", orthanc.aet, orthanc.dicom_port), ("dead", "NOBODY", dead)])
    assert aenode_main(["echo", "--config", str(toml), "--timeout", "2"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pacs\t") and "\tOK\t" in lines[0]
    assert lines[1].startswith("dead\t") and "\tFAIL\t" in lines[1]
