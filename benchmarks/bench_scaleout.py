"""Scale-out: studies/minute with one node on SQLite, one node on PostgreSQL and two nodes
on one PostgreSQL (one shared spool), the same batch of studies in the same run.

Each configuration gets a fresh data directory and database; the studies are sent with
DCMTK storescu, ``--parallel`` associations at a time spread over the nodes; the clock
runs from the first C-STORE to the last study analysed (``analysed``/``skipped``/``error``
in the index) and, separately, to the last SR/SC delivered to Orthanc.  PostgreSQL runs
with its durable defaults (fsync on), like SQLite's ``synchronous=FULL``.

    python benchmarks/bench_scaleout.py [--studies 8] [--slices 128] [--parallel 4] [--repeat 2]

On one machine the nodes share its cores: two nodes on a 2-core machine compete for the
same two cores, so the two-node figure shows the coordination cost, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aenode.phantom as phantom  # noqa: E402
from aenode.deliver.outbox import Outbox  # noqa: E402
from aenode.peers.orthanc import Orthanc  # noqa: E402
from aenode.peers.webhook import WebhookServer  # noqa: E402
from aenode.store.index import FINAL_STATES, Index  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from tests.pg import pg_server  # noqa: E402
from tests.store.twonode import analysed_counts, make_nodes, send  # noqa: E402


def _generate(root: Path, n: int, slices: int) -> list[tuple[str, list[Path]]]:
    out = []
    for k in range(n):
        s = phantom.generate_study(root / f"s{k}", "typical" if k % 2 == 0 else "negative", seed=100 + k,
                                   slices=slices, slice_thickness=1.25, extra_series=False)
        folder = root / f"s{k}" / Path(s.series[0][3]).name
        out.append((s.study_instance_uid, sorted(folder.glob("*.dcm"))))
    return out


def _run(label: str, tmp: Path, nodes_count: int, url: str | None, studies: list[tuple[str, list[Path]]],
         parallel: int, orthanc: Orthanc, webhook: WebhookServer) -> dict[str, object]:
    work = tmp / label
    work.mkdir()
    data = work / "data"
    nodes = make_nodes(work, nodes_count, url=url, orthanc=orthanc, webhook=webhook, data_dir=data,
                       quiet=2.0, after_release=0.3)
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_ready(timeout=300)
    index = Index.for_data_dir(data, url=url)
    box = Outbox(data / "outbox.sqlite", url=url)
    uids = [u for u, _ in studies]
    try:
        t0 = time.monotonic()
        queue = list(enumerate(studies))
        running: list = []
        while queue or running:
            running = [p for p in running if p.poll() is None]
            while queue and len(running) < parallel:
                k, (_, files) = queue.pop(0)
                running.append(send(nodes[k % nodes_count].port, files))
            time.sleep(0.05)
        sent_s = time.monotonic() - t0
        while not all((s := index.study(u)) is not None and s.state in FINAL_STATES for u in uids):
            time.sleep(0.1)
        analysed_s = time.monotonic() - t0
        while box.counts()["pending"] or box.counts()["sending"]:
            time.sleep(0.1)
        delivered_s = time.monotonic() - t0
        states = [index.study(u).state for u in uids]  # type: ignore[union-attr]
        counts = analysed_counts(nodes)
        if set(states) != {"analysed"}:
            raise SystemExit(f"{label}: not every study was analysed ({sorted(set(states))}); see {work}")
    finally:
        index.close()
        box.close()
        for n in nodes:
            n.stop()
    return {"config": label, "nodes": nodes_count, "engine": "postgresql" if url else "sqlite",
            "studies": len(uids), "sent_s": round(sent_s, 1), "analysed_s": round(analysed_s, 1),
            "delivered_s": round(delivered_s, 1),
            "studies_per_min": round(len(uids) / analysed_s * 60, 2),
            "states": sorted(set(states)), "max_analyses_per_study": max(counts.values()) if counts else 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--slices", type=int, default=128, help="1.25 mm slices per study (the models want >= 150 mm)")
    ap.add_argument("--parallel", type=int, default=4, help="storescu associations at a time")
    ap.add_argument("--repeat", type=int, default=2, help="rounds (each starts with another configuration)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    print(f"machine: {describe()}")
    if not shutil.which("/usr/bin/storescu"):
        raise SystemExit("DCMTK storescu is needed (/usr/bin/storescu)")
    tmp = Path(tempfile.mkdtemp(prefix="aenode-scaleout-"))
    try:
        studies = _generate(tmp / "studies", args.studies, args.slices)
        orthanc = Orthanc(tmp / "orthanc").start()
        webhook = WebhookServer().start()
        rows = []
        configs = [("1 node, PostgreSQL", 1, "pg"), ("1 node, SQLite", 1, "sqlite"), ("2 nodes, PostgreSQL", 2, "pg")]
        try:
            with pg_server(durable=True) as pg:
                for rnd in range(args.repeat):
                    # Each round starts with another configuration, so that neither warm
                    # caches nor a neighbour's load favour one of them throughout.
                    for label, count, engine in configs[rnd % 3:] + configs[:rnd % 3]:
                        url = pg.new_database("bench") if engine == "pg" else None
                        row = _run(f"r{rnd}-{count}-{engine}", tmp, count, url, studies, args.parallel,
                                   orthanc, webhook)
                        row["config"], row["round"] = label, rnd
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            webhook.stop()
            orthanc.stop()
        print(f"\n{args.studies} studies x {args.slices} slices, {args.parallel} associations at a time,"
              f" {args.repeat} round(s)")
        print(f"{'configuration':24} {'studies/min (each round)':>26} {'median':>8}")
        for label, _, _ in configs:
            got = [float(r["studies_per_min"]) for r in rows if r["config"] == label]  # type: ignore[arg-type]
            print(f"{label:24} {', '.join(f'{g:.1f}' for g in got):>26} {statistics.median(got):>8.1f}")
        if args.json:
            args.json.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
