"""Alert latency: from ``Index.record_result`` to receipt by each peer.

Runs the node's AlertWorker and DeliveryWorker threads (as ``aenode serve`` does) against
local peers (HTTP server, aiosmtpd, MLLP listener ACKing AA) on loopback, records N Typical
results on N studies one after another, and reports per channel the median and max time
from recording the result to the peer holding the alert.

    python benchmarks/bench_alerts.py [--n 20] [--poll 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid  # noqa: E402

from aenode.alert.worker import AlertWorker  # noqa: E402
from aenode.deliver.worker import DeliveryWorker  # noqa: E402
from aenode.store.meta import read_meta  # noqa: E402
from tests.alert.conftest import all_channels  # noqa: E402
from tests.alert.helpers import make_env, write_instance  # noqa: E402
from tests.alert.servers import MLLPServer, SMTPServer, WebhookServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--poll", type=float, default=1.0, help="[delivery] poll_seconds")
    args = ap.parse_args()
    wh, sm, ml = WebhookServer().start(), SMTPServer().start(), MLLPServer().start()
    with tempfile.TemporaryDirectory() as tmp:
        env = make_env(Path(tmp))
        config = env.config(all_channels(wh, sm, ml), delivery={"poll_seconds": args.poll})
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop,), daemon=True)
                   for w in (AlertWorker(config, env.index), DeliveryWorker(config, env.index))]
        for t in threads:
            t.start()
        lat: dict[str, list[float]] = {"webhook": [], "smtp": [], "hl7": []}
        for i in range(args.n):
            study, series = generate_uid(), generate_uid()
            f = write_instance(env.data_dir / "spool" / f"{i}.dcm", study, series)
            env.index.record_instance(read_meta(f), f, f.stat().st_size, "SCU")
            counts = {"webhook": len(wh.requests), "smtp": len(sm.messages), "hl7": len(ml.messages)}
            t0 = time.perf_counter()
            env.index.record_result(study, 1, "covid19-ct", "Typical", {"Typical": 0.9, "Negative": 0.1},
                                    selected_series=series)
            peers = {"webhook": lambda: len(wh.requests), "smtp": lambda: len(sm.messages),
                     "hl7": lambda: len(ml.messages)}
            pending = set(peers)
            while pending and time.perf_counter() - t0 < 30:
                for ch in list(pending):
                    if peers[ch]() > counts[ch]:
                        lat[ch].append(time.perf_counter() - t0)
                        pending.discard(ch)
                time.sleep(0.002)
        stop.set()
        for t in threads:
            t.join(10)
        env.index.close()
    for p in (wh, sm, ml):
        p.stop()
    print(f"alerts: n={args.n} poll_seconds={args.poll}")
    for ch, xs in lat.items():
        print(f"  {ch:8s} median {statistics.median(xs) * 1000:7.1f} ms   max {max(xs) * 1000:7.1f} ms"
              f"   ({len(xs)}/{args.n} received)")


if __name__ == "__main__":
    main()
