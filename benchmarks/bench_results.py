"""Results-into-PACS benchmark: SR build, SC build, durable write + enqueue, delivery to a
real Orthanc, for a 400-instance analysed series (400 x 512 x 512 int16 volume).

    python benchmarks/bench_results.py [--slices 400] [--size 512] [--repeats 5]

The inference stage is not part of this measurement (see docs/BENCHMARKS.md): the time
runs from "the result is known" (a ReportInput) to "Orthanc holds the SR and the SC".
Orthanc runs with TCP_NODELAY=1 on loopback, started by the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import describe  # noqa: E402

from aenode.config import parse_config  # noqa: E402
from aenode.deliver.outbox import Outbox  # noqa: E402
from aenode.deliver.worker import DeliveryWorker  # noqa: E402
from aenode.report.publish import enqueue_results, result_dir, write_dataset  # noqa: E402
from aenode.report.sc import build_sc  # noqa: E402
from aenode.report.sr import build_sr  # noqa: E402
from aenode.report.uids import result_uids  # noqa: E402
from tests.orthanc import Orthanc  # noqa: E402
from tests.report.factory import make_input  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pacs = Orthanc(tmp / "orthanc").start()
        try:
            config = parse_config({
                "node": {"data_dir": str(tmp / "data"), "ae_title": "AENODE"},
                "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                  "port": pacs.dicom_port}],
                "delivery": {"poll_seconds": 0.5, "backoff_base_seconds": 0.2}})
            box = Outbox.for_config(config)
            stop = threading.Event()
            worker = DeliveryWorker(config, None, outbox=box)
            t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
            t.start()
            rows = []
            for i in range(args.repeats + 1):  # first run warms imports and Orthanc
                inp = make_input(n=args.slices, size=args.size, seed=i)
                t0 = time.perf_counter()
                uids = result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, 1)
                sr = build_sr(inp, uids=uids)
                t1 = time.perf_counter()
                sc = build_sc(inp, uids=uids)
                t2 = time.perf_counter()
                d = result_dir(config.node.data_dir, inp)
                write_dataset(sr, d / "sr.dcm")
                write_dataset(sc, d / "sc.dcm")
                enqueue_results(config, [d / "sr.dcm", d / "sc.dcm"], inp.study_instance_uid, outbox=box)
                t3 = time.perf_counter()
                while box.counts()["sent"] < 2 * (i + 1):
                    time.sleep(0.002)
                t4 = time.perf_counter()
                # confirm Orthanc answers for the SR over REST (not counted)
                found = pacs.post("/tools/find", {"Level": "Instance",
                                                  "Query": {"SOPInstanceUID": uids.sr_sop_instance_uid}})
                assert found, "SR not in Orthanc"
                if i:
                    rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
            stop.set()
            t.join(timeout=5)
        finally:
            pacs.stop()
    names = ("SR build", "SC build", "write+fsync+enqueue", "C-STORE SR+SC to Orthanc", "total")
    print(f"# {args.slices} instances, {args.size}x{args.size} volume, {args.repeats} runs; "
          f"{describe()}")
    print("| stage | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for k, name in enumerate(names):
        vals = [r[k] for r in rows]
        print(f"| {name} | {statistics.median(vals):.3f} | {min(vals):.3f} | {max(vals):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
