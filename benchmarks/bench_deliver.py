"""Result delivery: DICOMweb STOW-RS vs DICOM C-STORE (plain and TLS) into one Orthanc.

Same run, same Orthanc (DICOMweb plugin + DICOM TLS enabled), same kind of payload: each
"set" is one result (SR + SC) written by the report stage, enqueued in the outbox and
delivered by one ``DeliveryWorker.run_once()`` pass (one association / one POST for the
two objects).  Methods are interleaved round by round so drift hits all of them alike.

    PYTHONPATH=. TCP_NODELAY=1 .venv/bin/python benchmarks/bench_deliver.py [--sets 20] [--size 256]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402

from aenode.config import Config, parse_config  # noqa: E402
from aenode.deliver.outbox import Outbox  # noqa: E402
from aenode.deliver.worker import DeliveryWorker  # noqa: E402
from aenode.peers.orthanc import Orthanc  # noqa: E402
from aenode.report.publish import write_results  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from tests.deliver.pki import make_pki  # noqa: E402
from tests.report.factory import make_input  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", type=int, default=20)
    ap.add_argument("--size", type=int, default=256, help="pixels per side of the synthetic CT (SC size)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-deliver-"))
    pki = make_pki(tmp / "pki")
    pacs = Orthanc(tmp / "pacs", dicomweb=True, dicom_tls=(pki.server_cert, pki.server_key, pki.ca)).start()
    # Orthanc serves DICOM either with or without TLS on its one port: plain C-STORE goes to
    # a second Orthanc with identical settings (same binary, same storage kind).
    plain = Orthanc(tmp / "pacs-plain").start()
    delivery = {"max_attempts": 3, "backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2, "timeout_seconds": 30}
    node = {"ae_title": "AENODE"}
    methods: dict[str, Config] = {
        "c-store": parse_config({"node": {**node, "data_dir": str(tmp / "d1")}, "delivery": delivery,
                                 "destinations": [{"name": "p", "ae_title": plain.aet, "host": "127.0.0.1",
                                                   "port": plain.dicom_port}]}),
        "c-store+tls": parse_config({"node": {**node, "data_dir": str(tmp / "d2")}, "delivery": delivery,
                                     "destinations": [{"name": "p", "ae_title": pacs.aet, "host": "127.0.0.1",
                                                       "port": pacs.dicom_port, "tls": {"ca_file": str(pki.ca)}}]}),
        "stow-rs": parse_config({"node": {**node, "data_dir": str(tmp / "d3")}, "delivery": delivery,
                                 "destinations": [{"type": "dicomweb", "name": "p", "url": pacs.dicomweb_url,
                                                   "insecure": True}]}),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    sizes: list[int] = []
    try:
        print(f"machine: {describe()}")
        print(f"Orthanc 1.10 (Debian), DICOMweb plugin 1.7; {args.sets} sets of SR + SC per method, "
              f"synthetic CT 40 x {args.size} x {args.size}")
        names = list(methods)
        for r in range(args.sets + 1):  # round 0 warms each path up and is not counted
            for m in names[r % len(names):] + names[:r % len(names)]:
                config = methods[m]
                inp = make_input(n=40, size=args.size, seed=r)
                paths = write_results(config.node.data_dir, inp)
                if r == 1 and m == names[0]:
                    sizes = [p.stat().st_size for p in paths]
                with Outbox.for_config(config) as box:
                    for p in paths:
                        uid = str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                        d = config.destinations[0]
                        box.enqueue(d.type, d.name, uid, str(p.resolve()), study_uid=inp.study_instance_uid)
                    w = DeliveryWorker(config, outbox=box)
                    t0 = time.perf_counter()
                    w.run_once()
                    dt = time.perf_counter() - t0
                    c = box.counts()
                    if c["sent"] != 2 * (r + 1):
                        raise SystemExit(f"{m}: not delivered: {[x.last_error for x in box.rows()]}")
                if r:
                    times[m].append(dt)
        print(f"payload per set: SR {sizes[0]} B, SC {sizes[1]} B")
        print(f"{'method':<14}{'median ms':>10}{'p90 ms':>9}{'min ms':>9}{'sets/s':>9}")
        for m, ts in times.items():
            ts.sort()
            med = statistics.median(ts)
            print(f"{m:<14}{med * 1000:>10.1f}{ts[int(0.9 * (len(ts) - 1))] * 1000:>9.1f}{ts[0] * 1000:>9.1f}"
                  f"{1 / med:>9.1f}")
    finally:
        pacs.stop()
        plain.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
