"""``aenode demo``: the node's main job, end to end, on one machine.

It does what a hospital deployment does, with real peers started on loopback ports:

1. writes a synthetic chest CT study (``aenode phantom``);
2. starts a real Orthanc as the PACS and a webhook receiver as the infection-control system;
3. starts the node on its built-in defaults, with only the data folder, the PACS and the
   webhook added;
4. sends the study with DCMTK ``storescu``, as a CT scanner would;
5. waits for the result, the delivery and the alert, and shows what each user sees:
   the category, where the SR and SC went, the SC image, the alert, the dashboard.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aenode.config import Config, parse_config
from aenode.logs import configure_logging
from aenode.node import running_node, study_status
from aenode.peers.orthanc import Orthanc
from aenode.peers.webhook import WebhookServer
from aenode.phantom import generate_study
from aenode.report.preview import sc_png_bytes
from aenode.report.publish import results_path
from aenode.store.datadir import DataDir
from aenode.web.auth import read_admin_password

STORESCU = "/usr/bin/storescu"  # DCMTK's, not pynetdicom's script of the same name


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def _say(msg: str) -> None:
    print(msg, flush=True)


def _demo_config(data_dir: Path, pacs: Orthanc, webhook_url: str) -> Config:
    defaults = Config()
    return parse_config({
        "node": {"data_dir": str(data_dir), "port": _free_port(defaults.node.port)},
        "web": {"port": _free_port(defaults.web.port)},
        "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        # A loopback receiver in plain HTTP: the demo says so (`aenode config check` warns too).
        "alerts": {"webhook": {"url": webhook_url, "insecure": True}},
    }, "demo")


def _settled(states: dict[str, dict[str, Any]] | None) -> bool:
    return states is not None and bool(states) and all(v["state"] in ("sent", "failed") for v in states.values())


def _wait_for_study(config: Config, timeout: float, alert_grace: float = 5.0) -> dict[str, Any] | None:
    """Poll ``aenode status`` until the result is delivered and any alert is sent.

    Whether a category alerts is the manifest's business, so a result that raised no
    alert within ``alert_grace`` seconds of being delivered counts as finished.
    """
    deadline = time.monotonic() + timeout
    last, delivered_at = "", None
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        rows = study_status(config)
        row = rows[0] if rows else None
        if row:
            state = f"state {row['state']}, {row['instances']} instances"
            if row["category"]:
                state += f", category {row['category']}"
            for key in ("delivery", "alert"):
                if row[key]:
                    state += f", {key} " + ",".join(f"{k}={v['state']}" for k, v in row[key].items())
            if state != last:
                _say(f"   ... {state}")
                last = state
            if row["state"] in ("skipped", "error"):
                return row
            if row["state"] == "analysed" and _settled(row["delivery"]):
                delivered_at = delivered_at or time.monotonic()
                if _settled(row["alert"]) or (not row["alert"] and time.monotonic() - delivered_at > alert_grace):
                    return row
        time.sleep(0.5)
    return row


def run_demo(out: Path, pattern: str, seed: int, keep_running: bool, slices: int | None = None) -> int:
    if not Path(STORESCU).exists():
        _say(f"demo: {STORESCU} not found: install DCMTK (scripts/setup.sh does)")
        return 1
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    _say(f"1. Writing a synthetic chest CT study (pattern {pattern}, seed {seed}) to {out / 'study'}")
    t0 = time.monotonic()
    study = generate_study(out / "study", pattern, seed=seed, slices=slices)
    files = sum(n for _uid, _desc, n, _folder in study.series)
    _say(f"   {files} files in {len(study.series)} series, {time.monotonic() - t0:.1f} s "
         f"(ground truth: {study.category}, kept beside the DICOM in {study.truth_dir}/)")

    log_file = (out / "node.log").open("a", encoding="utf-8")
    configure_logging("INFO", json=True, stream=log_file)  # the terminal shows the story, the file the detail
    _say("2. Starting a PACS (Orthanc) and an infection-control webhook receiver on loopback")
    pacs = Orthanc(out / "pacs").start()
    hook = WebhookServer().start()
    try:
        config = _demo_config(out / "data", pacs, hook.url)
        _say(f"3. Starting the node: AE {config.node.ae_title} on 127.0.0.1:{config.node.port}, "
             f"dashboard http://{config.web.host}:{config.web.port}/")
        with running_node(config) as node:
            _say(f"4. Sending the study with DCMTK storescu (as a CT scanner) to {config.node.ae_title}")
            t_send = time.monotonic()
            series_dirs = [str(folder) for _uid, _desc, _n, folder in study.series]
            sent = subprocess.run(
                [STORESCU, "-aec", config.node.ae_title, "-aet", "CT_SCANNER", "+sd",
                 "127.0.0.1", str(node.port), *series_dirs],
                capture_output=True, text=True, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            )
            if sent.returncode != 0:
                _say(f"   storescu failed ({sent.returncode}): {sent.stderr[-500:]}")
                return 1
            _say(f"   sent in {time.monotonic() - t_send:.1f} s; waiting for the study to complete and be analysed")
            row = _wait_for_study(config, timeout=300)
            if row is None or row["state"] != "analysed":
                _say(f"   the study did not finish: {json.dumps(row, indent=2) if row else 'no study'}")
                return 1
            _say(f"   done {time.monotonic() - t_send:.1f} s after the first instance was sent")
            _show(out, config, row, pacs, hook)
            if keep_running:
                _say("\nThe node keeps running; press Ctrl-C to stop.")
                try:
                    while True:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
    finally:
        hook.stop()
        pacs.stop()
        _say(f"\nNode log (JSON lines, no patient data): {out / 'node.log'}")
        log_file.close()
    return 0


def _show(out: Path, config: Config, row: dict[str, Any], pacs: Orthanc, hook: WebhookServer) -> None:
    _say("\n== What the radiologist sees (in PACS) ==")
    for res in row["results"]:
        probs = res["probabilities"] or {}
        _say(f"   model {res['model']}: category {res['category']} (not for diagnostic use)")
        _say("     probabilities: " + ", ".join(f"{k} {v:.2f}" for k, v in probs.items()))
        if res["involvement"] is not None:
            _say(f"     lung involvement: {res['involvement']:.1f} %")
        _say(f"     analysed series: {res['selected_series']}")
    study = pacs.get("/studies")
    for sid in study:
        info = pacs.get(f"/studies/{sid}")
        series = [pacs.get(f"/series/{s}") for s in info["Series"]]
        _say(f"   Orthanc study {info['MainDicomTags'].get('StudyInstanceUID')}:")
        for s in series:
            tags = s["MainDicomTags"]
            _say(f"     - {tags.get('Modality')} series '{tags.get('SeriesDescription', '')}': "
                 f"{len(s['Instances'])} instance(s)")
    result_dir = results_path(config.node.data_dir, row["study_uid"], row["model"], row["result_revision"])
    png = out / "secondary_capture.png"
    png.write_bytes(sc_png_bytes(result_dir / "sc.dcm"))
    _say(f"   secondary capture image: {png}")
    _say(f"   SR and SC files kept by the node: {result_dir}")

    _say("\n== What the infection-control team receives (webhook) ==")
    if hook.accepted:
        body = hook.json()
        _say(json.dumps(body, indent=2))
    else:
        _say("   no alert: this category does not raise one")

    _say("\n== Hospital IT ==")
    _say(f"   aenode status --json  (data in {config.node.data_dir})")
    password = read_admin_password(config.node.data_dir)
    if password:
        # The demo's own terminal only: the node never logs or prints it.
        _say(f"   dashboard http://{config.web.host}:{config.web.port}/ login: admin / {password}"
             f" (kept in {DataDir.of(config.node.data_dir).web_dir}, readable by this user only)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="run the node end to end on one machine with a generated study")
    p.add_argument("--out", default="demo-output", help="working folder (emptied first; default ./demo-output)")
    p.add_argument("--pattern", default="typical", choices=["typical", "indeterminate", "atypical", "negative"])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--slices", type=int, help="CT slices (default: the phantom's, covering the chest)")
    p.add_argument("--keep-running", action="store_true", help="leave the node and dashboard up until Ctrl-C")
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.pattern, a.seed, a.keep_running, a.slices))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path("demo-output"), "typical", 7, False))
