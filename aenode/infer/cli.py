"""``aenode predict PATH [--json]``: classify a folder of DICOM files offline.

Exit codes: 0 analysed; 1 the analysis failed or found nothing to analyse (no eligible
series, corrupt files, a model refused); 2 the request was wrong (no such folder, no
DICOM files in it, bad configuration).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import pydicom

from aenode.config import ConfigError, load_config
from aenode.store.meta import BadInstance, InstanceHeader, meta_from_dataset


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("predict", help="classify a folder of DICOM files offline (not for diagnosis)")
    p.add_argument("path", help="folder (searched recursively) or a single DICOM file")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default: $AENODE_CONFIG, else built-in)")
    p.add_argument("--model", action="append", metavar="NAME", help="run only this model (repeatable)")
    p.set_defaults(func=handler)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def scan_folder(root: Path) -> tuple[list[InstanceHeader], list[str], int]:
    """Header facts of every DICOM file under ``root``; (headers, corrupt file names, non-DICOM count)."""

    files = [root] if root.is_file() else sorted(
        Path(dirpath) / f for dirpath, _, names in os.walk(root) for f in names)
    infos: list[InstanceHeader] = []
    corrupt: list[str] = []
    other = 0
    for f in files:
        magic = _is_dicom_file(f)
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=not magic)
            if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
                raise BadInstance("not a DICOM instance")
            infos.append(dataclasses.replace(meta_from_dataset(ds), path=f.resolve()))
        except Exception:  # noqa: BLE001 - any unreadable file is reported by name, not raised
            if magic:
                corrupt.append(str(f.relative_to(root)) if f != root else f.name)
            else:
                other += 1
    return infos, corrupt, other


def _fail(as_json: bool, code: int, message: str, extra: dict | None = None) -> int:
    if as_json:
        print(json.dumps({"state": "error", "reason": message, **(extra or {})}, indent=2))
    else:
        print(f"aenode predict: {message}", file=sys.stderr)
    return code


def _text_report(doc: dict) -> str:
    lines = []
    for m in doc["models"]:
        lines.append(f"model {m['model']} {m['version']}: {m['state']}" + (f" ({m['reason']})" if m["reason"] else ""))
        sel = m["selection"]["selected"]
        if sel:
            lines.append(f"  selected series: {sel['description'] or sel['series_uid']} "
                         f"({sel['instances']} slices, {sel['slice_thickness_mm']} mm, uid {sel['series_uid']})")
        for s in m["selection"]["skipped"]:
            lines.append(f"  skipped series: {s['description'] or s['series_uid']} ({s['instances']} instances): {s['reason']}")
        for w in m.get("volume_warnings", []):
            lines.append(f"  volume: {w}")
        if m["state"] == "out-of-domain":
            lines.append("  category: none - outside the validated domain of the model, no AI category; "
                         "needs a radiologist's review")
            lines.append(f"  domain: {m['domain']['reason'] if m.get('domain') else m['reason']}")
            lines.append(f"  time: {m['timings_s'].get('total', 0):.2f} s")
        if m["state"] == "analysed":
            lines.append(f"  category: {m['category']}")
            probs = ", ".join(f"{k} {v:.3f}" for k, v in m["probabilities"].items())
            lines.append(f"  probabilities: {probs}")
            if m.get("involvement_percent") is not None:
                lines.append(f"  lung involvement: {m['involvement_percent']:.1f} % "
                             f"(lesion {m['lesion_volume_ml']:.0f} ml of lung {m['lung_volume_ml']:.0f} ml)")
            if m["alerts"]:
                lines.append(f"  alert: {', '.join(m['alerts'])}")
            lines.append(f"  time: {m['timings_s'].get('total', 0):.2f} s")
    lines.append(f"study: {doc['state']}" + (f" ({doc['reason']})" if doc["reason"] else ""))
    lines.append("decision support only, not for diagnostic use")
    return "\n".join(lines)


def handler(args: argparse.Namespace) -> int:
    from aenode.infer.analyse import analyse_instances
    from aenode.infer.registry import ModelRegistry

    as_json = bool(args.json)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(as_json, 2, f"configuration error in {exc.source}: {'; '.join(exc.problems)}")
    root = Path(args.path)
    if not root.exists():
        return _fail(as_json, 2, f"{root}: no such file or folder")
    infos, corrupt, other = scan_folder(root)
    if corrupt:
        return _fail(as_json, 1, f"corrupt DICOM file(s): {', '.join(corrupt[:5])}"
                     + (f" and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""), {"corrupt_files": corrupt})
    if not infos:
        return _fail(as_json, 2, f"{root}: no DICOM files found" + (f" ({other} other files ignored)" if other else ""))
    registry = ModelRegistry.from_config(config)
    enabled = args.model
    models = [m for m in registry if not enabled or m.name in enabled]
    if enabled:
        missing = [n for n in enabled if not any(m.name == n for m in registry)]
        if missing:
            why = "; ".join(registry.failed.get(n, f"{n}: not found under {config.model.path}") for n in missing)
            return _fail(as_json, 1, f"model(s) not available: {why}")
    if not models:
        problems = "; ".join(registry.failed.values()) or f"no model packages under {config.model.path}"
        return _fail(as_json, 1, f"no model could be loaded: {problems}")
    analysis = analyse_instances(infos, models, own_ae_titles=[config.node.ae_title])
    doc = {"path": str(root), "instances": len(infos), **analysis.as_dict()}
    if registry.failed:
        doc["refused_models"] = registry.failed
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(_text_report(doc))
    return 0 if analysis.state == "analysed" else 1
