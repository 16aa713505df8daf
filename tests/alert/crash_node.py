"""Subprocess for the crash test: the alert + delivery workers of a node, until all is sent.

``python -m tests.alert.crash_node CONFIG.json`` (a config dict as JSON).  With
``AENODE_TEST_ALERT_PAUSE_AFTER_SEND`` set it sleeps after a channel accepted an alert and
before the outbox records it: the test SIGKILLs it there.
"""

from __future__ import annotations

import json
import sys
import time

from aenode.alert.worker import AlertWorker
from aenode.config import parse_config
from aenode.deliver.outbox import Outbox
from aenode.deliver.worker import DeliveryWorker
from aenode.store.datadir import DataDir
from aenode.store.index import Index


def main(path: str) -> int:
    config = parse_config(json.loads(open(path, encoding="utf-8").read()))
    index = Index.for_data_dir(config.node.data_dir)
    # The default 300 s lease: the restarted process must take over the row the killed one
    # held at start-up (resume_interrupted), not when the lease runs out.
    outbox = Outbox(DataDir.of(config.node.data_dir).outbox_db, max_attempts=20, backoff_base_seconds=0.1,
                    backoff_cap_seconds=0.5)
    alerts = AlertWorker(config, index, outbox=outbox)
    delivery = DeliveryWorker(config, index, outbox=outbox)
    delivery.resume_interrupted()  # what DeliveryWorker.run does first
    print("ready", flush=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        alerts.run_once()
        delivery.run_once()
        c = outbox.counts()
        if c["sent"] and not c["pending"] and not c["sending"]:
            return 0
        time.sleep(0.05)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
