"""``aenode serve`` and ``aenode status``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aenode.cli import load_config_or_report


def _load(args: argparse.Namespace):
    return load_config_or_report(args.config)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    from aenode.pipeline import run_node

    try:
        run_node(config)
    except OSError as exc:
        from aenode.logs import get_logger

        get_logger("aenode.receive").error("serve_failed", error=type(exc).__name__, errno=exc.errno)
        return 1
    return 0


def _pick(detail: dict | None, *keys: str) -> Any:
    if not detail:
        return None
    for k in keys:
        if k in detail:
            return detail[k]
    return None


def _result_fields(r: Any) -> dict[str, Any]:
    detail = r.detail if r else None
    return {
        "selected_series": r.selected_series if r else None,
        "model": r.model if r else None,
        "result_revision": r.revision if r else None,
        "category": r.category if r else None,
        "probabilities": r.probabilities if r else None,
        "involvement": r.involvement if r else None,
        "result_uids": _pick(detail, "result_uids"),
    }


def study_status(data_dir: Path, primary_model: str | None = None) -> list[dict[str, Any]]:
    """One dict per study for ``aenode status`` (no patient data: UIDs and states only).

    The summary fields come from ``primary_model``'s newest result (else the first model
    by name); ``results`` lists the newest result of every model.
    """
    from aenode.store.index import Index

    db = Path(data_dir) / "index.sqlite"
    if not db.exists():
        return []
    index = Index(db, data_dir)
    outbox = None
    if (Path(data_dir) / "outbox.sqlite").is_file():
        from aenode.deliver.outbox import OUTBOX_FILE, Outbox

        outbox = Outbox(Path(data_dir) / OUTBOX_FILE)
    try:
        from aenode.alert.status import alert_status
    except ImportError:  # alert stage not installed
        alert_status = None
    try:
        out = []
        for s in index.studies():
            newest: dict[str, Any] = {}
            for r in index.results(s.study_uid):  # ordered by revision
                newest[r.model] = r
            by_name = [newest[m] for m in sorted(newest)]
            r = newest.get(primary_model) or (by_name[0] if by_name else None)
            detail = r.detail if r else None
            out.append({
                "study_uid": s.study_uid,
                "state": s.state,
                "revision": s.revision,
                "instances": s.instance_count,
                "reason": s.reason,
                **_result_fields(r),
                "results": [_result_fields(x) for x in by_name],
                "delivery": (outbox.summary_for_study(s.study_uid) if outbox else None)
                or _pick(detail, "delivery", "delivery_state"),
                "alert": (alert_status(data_dir, s.study_uid, outbox=outbox) if alert_status and outbox else None)
                or _pick(detail, "alert", "alert_state"),
            })
        return out
    finally:
        index.close()
        if outbox is not None:
            outbox.close()


def _status(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    rows = study_status(config.node.data_dir, config.model.primary)
    if args.json:
        print(json.dumps({"studies": rows}, indent=2))
        return 0
    if not rows:
        print("no studies")
        return 0
    cols = ["study_uid", "state", "revision", "instances", "selected_series", "model", "category",
            "probabilities", "result_uids", "delivery", "alert"]

    def cell(v: Any) -> str:
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

    table = [cols] + [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the node (DICOM listener, stabiliser, workers)")
    serve.add_argument("--config", help="TOML file (default: $AENODE_CONFIG, else built-in defaults)")
    serve.set_defaults(func=_serve)

    status = subparsers.add_parser("status", help="list received studies and their processing state")
    status.add_argument("--config", help="TOML file (default: $AENODE_CONFIG, else built-in defaults)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
