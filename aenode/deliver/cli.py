"""``aenode retry`` (requeue failed deliveries) and ``aenode echo`` (probe each destination).

``register(subparsers)`` adds both; the top-level CLI calls it.  The configuration is
loaded here with :func:`aenode.config.load_config` (printing problems in the CLI's one
format) rather than through ``aenode.cli``, which sits above this stage.
"""

from __future__ import annotations

import argparse
import sys

from aenode.config import Config, ConfigError, load_config
from aenode.deliver.destinations import describe, probe
from aenode.deliver.outbox import Outbox


def _config(path: str | None) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"configuration error in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _retry(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if config is None:
        return 2
    if not args.all and not args.ids:
        print("aenode retry: give row IDs or --all", file=sys.stderr)
        return 2
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
    retry.add_argument("--all", action="store_true", help="requeue every failed row")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox row IDs (see 'aenode status')")
    retry.set_defaults(func=_retry)

    ech = subparsers.add_parser("echo", help="probe every configured destination (C-ECHO or DICOMweb query)")
    ech.add_argument("--config", help="TOML configuration file")
    ech.add_argument("--timeout", type=float, default=10.0, help="seconds per destination (default 10)")
    ech.set_defaults(func=_echo)
