"""The ``aenode`` command line.

Each stage contributes its own subcommands through a ``register(subparsers)`` function in
its package; this file lists them, so it stays a table of contents.  Handlers return an
exit code: 0 success, 1 the operation failed, 2 the request was wrong (bad arguments or
configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from aenode import __version__, alert, deliver, demo, node
from aenode.backfill import cli as backfill_cli
from aenode.config import load_config_or_report, render_toml
from aenode.deliver import cli as deliver_cli
from aenode.evaluate import cli as evaluate_cli
from aenode.export import cli as export_cli
from aenode.infer import cli as infer_cli
from aenode.logs import configure_logging, get_logger
from aenode.phantom import cli as phantom_cli
from aenode.surveil import cli as surveil_cli
from aenode.web import cli as web_cli
from aenode.web.store import WebStore

_CONFIG_HELP = "TOML file (default: $AENODE_CONFIG, else built-in defaults)"


def _config_check(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.file)
    if config is None:
        return 2
    print(f"# effective configuration ({args.file or 'built-in defaults'}); valid")
    print(render_toml(config), end="")
    for warning in [*deliver.transport_warnings(config), *alert.transport_warnings(config)]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        node.run_node(config, args.log_level)
    except OSError as exc:
        get_logger("aenode.node").error("serve_failed", error=type(exc).__name__, errno=exc.errno,
                                        detail=exc.strerror)
        return 1
    return 0


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict) and v and all(isinstance(x, dict) and "state" in x for x in v.values()):
        # delivery / alert state per destination or channel: "pacs=sent,webhook=failed"
        return ",".join(f"{k}={x['state']}" for k, x in v.items())
    if isinstance(v, dict):
        return ",".join(f"{k}={x:.2f}" if isinstance(x, float) else f"{k}={x}" for k, x in v.items())
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def _status(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    rows = node.study_status(config)
    if args.json:
        print(json.dumps({"studies": rows}, indent=2))
        return 0
    if not rows:
        print("no studies")
        return 0
    cols = ["study_uid", "state", "revision", "instances", "selected_series", "model", "category",
            "probabilities", "result_uids", "delivery", "alert"]
    for r in rows:  # outside the model's validated domain: no category, and the reason
        if r.get("result_state") == "out-of-domain":
            r["category"] = f"none: out-of-domain ({r.get('domain')})"
    table = [cols] + [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aenode",
        description="PACS-integrated DICOM AI node for chest CT (decision support, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"aenode {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a TOML file and print the effective configuration")
    check.add_argument("file", nargs="?", help=_CONFIG_HELP)
    check.set_defaults(func=_config_check)

    serve = sub.add_parser("serve", help="run the node (DICOM listener, stabiliser, workers, dashboard)")
    serve.add_argument("--config", help=_CONFIG_HELP)
    serve.set_defaults(func=_serve)

    status = sub.add_parser("status", help="list received studies and their processing state")
    status.add_argument("--config", help=_CONFIG_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    for stage_cli in (phantom_cli, infer_cli, evaluate_cli, deliver_cli, web_cli, surveil_cli, backfill_cli, demo):
        stage_cli.register(sub)
    export_cli.register(sub, confirmations=lambda config: WebStore.for_data_dir(config.node.data_dir,
                                                                                    url=config.database.url))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
