"""Web benchmark: response times of /metrics, /api/alerts, /api/studies and the alerts
page against an index of N analysed studies (half of them alerting), each with a stored
header instance.  Run: ``python -m tests.web.bench_web [N]``."""

from __future__ import annotations

import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from aenode.config import REPO_MODELS_DIR, parse_config
from aenode.store.index import Index
from aenode.store.meta import read_meta
from tests.web.conftest import MODEL, PROBS, TOKEN, decide_alerts, open_app, web_section, write_ct


def main(n: int) -> None:
    from aenode.web.auth import hash_password

    root = Path(tempfile.mkdtemp(prefix="aenode-bench-web-"))
    atexit.register(shutil.rmtree, root, True)
    data = root / "data"
    index = Index.for_data_dir(data)
    t0 = time.perf_counter()
    for i in range(n):
        study, series = generate_uid(), generate_uid()
        p = write_ct(data / "spool" / study / "1.dcm", study, series, 1)
        index.record_instance(read_meta(p), p, p.stat().st_size, "CT01")
        cat = "typical" if i % 2 == 0 else "negative"
        probs = PROBS if cat == "typical" else {"typical": 0.02, "indeterminate": 0.03, "atypical": 0.05,
                                                "negative": 0.9}
        index.record_result(study, 1, MODEL, cat, probs, selected_series=series, involvement=10.0,
                            detail={"version": "1.0.0", "timings_s": {"load": 1.2, "infer": 0.8}})
    config = parse_config({"node": {"data_dir": str(data)}, "model": {"path": str(REPO_MODELS_DIR)},
                           "web": web_section({"vera": hash_password("x")})})
    while decide_alerts(config, index):  # the alert stage's dashboard decisions, as in a running node
        pass
    index.close()
    print(f"seeded {n} studies in {time.perf_counter() - t0:.1f} s")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with open_app(config) as app, TestClient(app, base_url="http://127.0.0.1") as c:
        for path in ("/metrics", "/api/alerts", "/api/alerts?unacknowledged=true", "/api/studies"):
            c.get(path, headers=headers)  # warm (header cache, manifests)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                r = c.get(path, headers=headers)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (path, r.status_code)
            print(f"| {path} | {n} | {statistics.median(times) * 1000:.0f} ms | {len(r.content) // 1024} KiB |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
