"""``aenode surveillance report [--from DATE] [--until DATE] --format csv|fhir|jrs [--out FILE]``."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time

from aenode.config import load_config_or_report
from aenode.surveil.reports import fhir_measure_report_json, jrs_csv, records_csv
from aenode.surveil.store import SurveillanceStore
from aenode.surveil.worker import surveillance_model


def parse_date(value: str) -> str:
    """argparse type: YYYY-MM-DD, returned as given."""
    try:
        _dt.date.fromisoformat(value)
        if len(value) != 10:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a date YYYY-MM-DD") from None
    return value


def _report(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    if args.since and args.until and args.since > args.until:
        print("--from is after --until", file=sys.stderr)
        return 2
    with SurveillanceStore.for_data_dir(config.node.data_dir, url=config.database.url) as store:
        records = store.records(args.since, args.until, surveillance_model(config))
    if args.format == "csv":
        text = records_csv(records)
    elif args.format == "jrs":
        text = jrs_csv(records)
    else:
        dates = [r.study_date for r in records if r.study_date]
        since = args.since or (min(dates) if dates else time.strftime("%Y-%m-%d"))
        until = args.until or (max(dates) if dates else time.strftime("%Y-%m-%d"))
        text = fhir_measure_report_json(config, records, since, until, created=time.time()) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        print(f"{len(records)} record(s) -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = subparsers.add_parser("surveillance", help="CT viral-pneumonia surveillance reports")
    sub = s.add_subparsers(dest="surveillance_command", required=True, metavar="ACTION")
    rp = sub.add_parser("report", help="records as CSV, a FHIR R4 MeasureReport, or the JRS registration CSV")
    rp.add_argument("--from", dest="since", type=parse_date, help="first study date, YYYY-MM-DD")
    rp.add_argument("--until", type=parse_date, help="last study date, YYYY-MM-DD (inclusive)")
    rp.add_argument("--format", required=True, choices=["csv", "fhir", "jrs"])
    rp.add_argument("--out", help="write to FILE instead of standard output")
    rp.add_argument("--config", help="TOML file (default: $AENODE_CONFIG, else built-in defaults)")
    rp.set_defaults(func=_report)
