"""``aenode backfill --from DATE --until DATE [--source NAME] [--max-per-hour N] [--config FILE]``."""

from __future__ import annotations

import argparse
import sys

from aenode.backfill.run import BackfillError, backfill
from aenode.config import load_config_or_report
from aenode.surveil.cli import parse_date


def _backfill(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    if args.since > args.until:
        print("--from is after --until", file=sys.stderr)
        return 2
    try:
        prog = backfill(config, args.since, args.until, source=args.source, max_per_hour=args.max_per_hour)
    except BackfillError as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 1
    print(f"backfill done: {prog.retrieved} retrieved, {prog.failed} failed, {prog.already_held} already held, "
          f"{prog.skipped_done} done earlier")
    return 1 if prog.failed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("backfill", help="retrieve past CT studies from a PACS (C-FIND + C-MOVE) "
                                               "for surveillance; the node must be running to receive them")
    p.add_argument("--from", dest="since", required=True, type=parse_date, help="first study date, YYYY-MM-DD")
    p.add_argument("--until", required=True, type=parse_date, help="last study date, YYYY-MM-DD (inclusive)")
    p.add_argument("--source", help="a [[destinations]] name that answers C-FIND / C-MOVE "
                                    "(default: [backfill] source)")
    p.add_argument("--max-per-hour", type=int, help="C-MOVE requests per hour (default: [backfill] max_per_hour)")
    p.add_argument("--config", help="TOML file (default: $AENODE_CONFIG, else built-in defaults)")
    p.set_defaults(func=_backfill)
