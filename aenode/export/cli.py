"""``aenode export --out DIR [--from D] [--until D] [--confirmed-only] [--model NAME] [--send DEST]``.

Exit codes: 0 written (and sent); 1 the export or the sending failed; 2 the request was
wrong (bad dates, configuration, unknown destination).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

from aenode.config import Config, load_config_or_report
from aenode.deliver.destinations import find_destination
from aenode.export.dataset import ConfirmationSource, Exporter, Selection
from aenode.export.send import send_files

ConfirmationsFor = Callable[[Config], ConfirmationSource]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             confirmations: ConfirmationsFor | None = None) -> None:
    """``confirmations`` opens the radiologists' labels (the web store), given by ``aenode.cli``."""
    p = subparsers.add_parser("export", help="write (or send) a de-identified research dataset")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created; re-running resumes)")
    p.add_argument("--from", dest="since", type=_date, metavar="YYYY-MM-DD", help="studies received on or after")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD", help="studies received on or before")
    p.add_argument("--confirmed-only", action="store_true", help="only studies a radiologist confirmed or corrected")
    p.add_argument("--model", metavar="NAME", help="whose results label the studies (default: [model] primary)")
    p.add_argument("--send", metavar="DESTINATION", help="also send the files to this [[destinations]] name")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default: $AENODE_CONFIG, else built-in)")
    p.set_defaults(func=lambda args: handler(args, confirmations))


def handler(args: argparse.Namespace, confirmations: ConfirmationsFor | None) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    if args.since and args.until and args.since > args.until:
        print("aenode export: --from is after --until", file=sys.stderr)
        return 2
    if args.send and find_destination(config, args.send) is None:
        print(f"aenode export: --send: no destination named {args.send!r} in [[destinations]]", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    source = confirmations(config) if confirmations else None
    exporter = Exporter(config, Path(args.out), confirmations=source, progress=progress)
    summary = exporter.run(Selection(args.since, args.until, args.confirmed_only, args.model))
    doc: dict[str, object] = {"out": str(args.out), **summary.as_dict()}
    code = 0
    if args.send:
        states = send_files(config, args.send, summary.files, progress=progress)
        doc["sent"] = states
        if set(states) - {"sent"}:
            code = 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        mb = summary.bytes / 1e6
        print(f"exported {summary.studies} studies ({summary.written} written, {summary.resumed} already there), "
              f"{summary.instances} files, {mb:.1f} MB in {summary.seconds:.1f} s to {args.out}")
        for reason, n in sorted(summary.skipped.items()):
            print(f"  not exported: {n} ({reason})")
        if summary.excluded_burned_in:
            print(f"  excluded {summary.excluded_burned_in} instances with burned-in annotation")
        if "sent" in doc:
            print(f"  sent to {args.send}: {doc['sent']}")
    return code
