"""``aenode retry`` (requeue failed deliveries) and ``aenode echo`` (C-ECHO each destination)."""

from __future__ import annotations

import argparse
import sys

from aenode.config import load_config_or_report


def _config(args: argparse.Namespace):
    return load_config_or_report(args.config)


def _retry(args: argparse.Namespace) -> int:
    from aenode.deliver.outbox import Outbox

    config = _config(args)
    if config is None:
        return 2
    if not args.all and not args.ids:
        print("aenode retry: give row IDs or --all", file=sys.stderr)
        return 2
    with Outbox.for_config(config) as box:
        if args.all:
            n = box.requeue(all_failed=True)
        else:
            unknown = [i for i in args.ids if box.get(i) is None]
            if unknown:
                print(f"aenode retry: no outbox row {', '.join(map(str, unknown))}", file=sys.stderr)
                return 2
            not_failed = [i for i in args.ids if box.get(i).state != "failed"]
            n = box.requeue(args.ids)
            for i in not_failed:
                print(f"row {i} is {box.get(i).state}, not failed: left as it is", file=sys.stderr)
    print(f"requeued {n} failed deliver{'y' if n == 1 else 'ies'}")
    return 0


def _echo(args: argparse.Namespace) -> int:
    from aenode.deliver.dicom import Peer, echo

    config = _config(args)
    if config is None:
        return 2
    if not config.destinations:
        print("no destinations configured")
        return 0
    bad = 0
    for d in config.destinations:
        ok, detail = echo(Peer(d.ae_title, d.host, d.port), config.node.ae_title, args.timeout)
        print(f"{d.name}\t{d.ae_title}@{d.host}:{d.port}\t{'OK' if ok else 'FAIL'}\t{detail}")
        bad += not ok
    return 1 if bad else 0


def register(subparsers) -> None:
    retry = subparsers.add_parser("retry", help="requeue failed deliveries (outbox rows in state 'failed')")
    retry.add_argument("--config", help="TOML configuration file")
    retry.add_argument("--all", action="store_true", help="requeue every failed row")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox row IDs (see 'aenode status')")
    retry.set_defaults(func=_retry)

    ech = subparsers.add_parser("echo", help="C-ECHO every configured destination")
    ech.add_argument("--config", help="TOML configuration file")
    ech.add_argument("--timeout", type=float, default=10.0, help="seconds per destination (default 10)")
    ech.set_defaults(func=_echo)
