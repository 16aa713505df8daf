"""``aenode retry`` (requeue failed deliveries) and ``aenode echo`` (probe each destination).

``register(subparsers)`` adds both; the top-level CLI calls it.  ``aenode retry`` also
re-queues studies whose analysis ended in ``error`` (``--studies``), so that a fault that
has passed (a full disk, a PACS that was down) is recovered with one command.
"""

from __future__ import annotations

import argparse
import sys

from aenode.config import load_config_or_report
from aenode.deliver.destinations import describe, probe
from aenode.deliver.outbox import Outbox
from aenode.store.datadir import DataDir
from aenode.store.index import Index

_config = load_config_or_report


def _retry(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if config is None:
        return 2
    if not args.all and not args.ids and not args.studies:
        print("aenode retry: give row IDs, --all or --studies", file=sys.stderr)
        return 2
    if args.studies or args.all:
        index = Index.for_data_dir(DataDir.of(config.node.data_dir).root, url=config.database.url)
        try:
            studies = index.requeue_failed()
        finally:
            index.close()
        print(f"requeued {studies} stud{'y' if studies == 1 else 'ies'} whose analysis had failed")
        if not (args.all or args.ids):
            return 0
    with Outbox.for_config(config) as box:
        if args.all:
            n = box.requeue(all_failed=True)
        else:
            rows = {i: box.get(i) for i in args.ids}
            unknown = [i for i, r in rows.items() if r is None]
            if unknown:
                print(f"aenode retry: no outbox row {', '.join(map(str, unknown))}", file=sys.stderr)
                return 2
            n = box.requeue(args.ids)
            for i, r in rows.items():
                if r is not None and r.state != "failed":
                    print(f"row {i} is {r.state}, not failed: left as it is", file=sys.stderr)
    print(f"requeued {n} failed deliver{'y' if n == 1 else 'ies'}")
    return 0


def _echo(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if config is None:
        return 2
    if not config.destinations:
        print("no destinations configured")
        return 0
    bad = 0
    for d in config.destinations:
        ok, detail = probe(config, d, args.timeout)
        print(f"{d.name}\t{describe(d)}\t{'OK' if ok else 'FAIL'}\t{detail}")
        bad += not ok
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retry = subparsers.add_parser("retry", help="requeue failed deliveries (outbox rows in state 'failed')")
    retry.add_argument("--config", help="TOML configuration file")
    retry.add_argument("--all", action="store_true", help="requeue every failed row and every failed study")
    retry.add_argument("--studies", action="store_true", help="requeue studies whose analysis ended in error")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox row IDs (see 'aenode status')")
    retry.set_defaults(func=_retry)

    ech = subparsers.add_parser("echo", help="probe every configured destination (C-ECHO or DICOMweb query)")
    ech.add_argument("--config", help="TOML configuration file")
    ech.add_argument("--timeout", type=float, default=10.0, help="seconds per destination (default 10)")
    ech.set_defaults(func=_echo)
