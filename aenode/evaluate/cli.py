"""``aenode evaluate DIR ...`` (local validation) and ``aenode models list | promote NAME@VERSION``.

Exit codes: 0 done; 1 the evaluation found nothing to score or a model failed to load;
2 the request was wrong (no such folder, bad labels file, unknown model or version).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from aenode.config import Config, load_config_or_report
from aenode.evaluate.metrics import split, summarise
from aenode.evaluate.report import publish_report, write_report
from aenode.evaluate.run import LabelsError, evaluate_folder, read_labels
from aenode.infer.engine import Model
from aenode.infer.manifest import ManifestError, load_manifest, verify_onnx
from aenode.infer.promotions import Promotions
from aenode.infer.registry import active_versions, installed_packages


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("evaluate", help="run a model on a labelled set and report agreement (local validation)")
    p.add_argument("path", help="an export folder, or a folder of studies with --labels")
    p.add_argument("--labels", metavar="FILE.csv", help="columns study_instance_uid,category (default: DIR/labels.csv)")
    p.add_argument("--model", metavar="NAME[@VERSION]",
                   help="model to evaluate: its active version, or an installed candidate (default: [model] primary)")
    p.add_argument("--report", metavar="DIR", help="write report.html, report.json and PNG figures here")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default: $AENODE_CONFIG, else built-in)")
    p.set_defaults(func=_evaluate)

    m = subparsers.add_parser("models", help="installed model packages: list them, promote a version")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="installed packages with versions, the active one and the mode")
    ls.add_argument("--config", metavar="FILE", help="TOML configuration")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_models_list)
    pr = msub.add_parser("promote", help="make NAME@VERSION the active version (logged; the old one stays)")
    pr.add_argument("target", metavar="NAME@VERSION")
    pr.add_argument("--config", metavar="FILE", help="TOML configuration")
    pr.set_defaults(func=_models_promote)


def _err(message: str) -> None:
    print(f"aenode: {message}", file=sys.stderr)


def _active_model(config: Config, wanted: str) -> Model | str:
    """The active package of NAME, or the installed NAME@VERSION (a candidate), loaded; or why not."""
    installed, failed = installed_packages(config.model.path, active_versions(config))
    name, _, version = wanted.partition("@")
    pkg = next((i for i in installed if i.name == name and (i.version == version if version else i.active)), None)
    if pkg is None:
        return f"no model {wanted!r} under {config.model.path}" + (f" (refused: {failed})" if failed else "")
    try:
        return Model(pkg.package_dir, providers=list(config.model.providers), device_id=config.model.device_id)
    except ManifestError as exc:
        return str(exc)


def _evaluate(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    root = Path(args.path)
    if not root.is_dir():
        _err(f"evaluate: {root}: no such folder")
        return 2
    model = _active_model(config, args.model or config.model.primary)
    if isinstance(model, str):
        _err(f"evaluate: {model}")
        return 2
    classes = [c.name for c in model.manifest.outputs.classes]
    try:
        labels = read_labels(Path(args.labels) if args.labels else root / "labels.csv", classes)
    except LabelsError as exc:
        _err(f"evaluate: {exc}")
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    ev = evaluate_folder(root, labels, model, own_ae_titles=[config.node.ae_title], progress=progress)
    doc = summarise(ev.cases, classes)
    doc.update({"model": model.name, "version": model.manifest.version, "missing": len(ev.missing),
                "unlabelled": ev.unlabelled, "seconds": round(ev.seconds, 3),
                "seconds_per_study": ev.seconds / len(ev.cases) if ev.cases else 0.0,
                "split": split(ev.cases, classes), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    if args.report:
        files = write_report(Path(args.report), doc, ev.cases)
        doc["report_files"] = [str(p) for p in files]
        doc["published"] = str(publish_report(config.node.data_dir, files, doc))   # the dashboard links it
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"model {model.name} {model.manifest.version}: {doc['n']} studies scored"
              f" ({doc['not_scored']} without a category, {len(ev.missing)} labelled but not found)")
        if doc["n"]:
            ci = doc["accuracy_ci95"]
            assert isinstance(ci, list)
            lo, hi = float(ci[0]), float(ci[1])
            print(f"  accuracy {doc['accuracy']:.3f} (95 % CI {lo:.3f}-{hi:.3f}); kappa {doc['kappa']:.3f},"
                  f" linear-weighted {doc['kappa_linear']:.3f}; ECE {doc['ece']:.3f};"
                  f" out of domain {doc['out_of_domain_rate']:.1%}")
            for name, pc in doc["per_class"].items():  # type: ignore[attr-defined]
                sens = "-" if pc["sensitivity"] is None else f"{pc['sensitivity']:.2f}"
                spec = "-" if pc["specificity"] is None else f"{pc['specificity']:.2f}"
                print(f"  {name:<14} n {pc['n']:>3}  sensitivity {sens} "
                      f"({pc['sensitivity_ci95'][0]:.2f}-{pc['sensitivity_ci95'][1]:.2f})  specificity {spec} "
                      f"({pc['specificity_ci95'][0]:.2f}-{pc['specificity_ci95'][1]:.2f})")
        if args.report:
            print(f"  report: {Path(args.report) / 'report.html'}")
        print("decision support only, not for diagnostic use")
    return 0 if doc["n"] else 1


def _models_list(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    installed, failed = installed_packages(config.model.path, active_versions(config))
    def mode(name: str, version: str, active: bool) -> str:
        if active:
            return config.model_mode(name)
        settings = config.models.get(f"{name}@{version}")
        return settings.mode if settings else "inactive"

    rows = [{"name": i.name, "version": i.version, "active": i.active, "mode": mode(i.name, i.version, i.active),
             "package": str(i.package_dir)} for i in installed]
    if args.json:
        print(json.dumps({"models": rows, "refused": failed}, indent=2))
        return 0
    if not rows:
        print(f"no model packages under {config.model.path}")
    for r in rows:
        print(f"{r['name']}@{r['version']}  {'active' if r['active'] else 'installed'}  mode={r['mode']}  {r['package']}")
    for pkg, why in failed.items():
        print(f"{pkg}: refused ({why})")
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    name, sep, version = args.target.partition("@")
    if not sep or not name or not version:
        _err(f"models promote: {args.target!r} is not NAME@VERSION")
        return 2
    installed, _failed = installed_packages(config.model.path, active_versions(config))
    pkg = next((i for i in installed if i.name == name and i.version == version), None)
    if pkg is None:
        have = ", ".join(f"{i.name}@{i.version}" for i in installed) or "none"
        _err(f"models promote: {name}@{version} is not installed under {config.model.path} (installed: {have})")
        return 2
    try:
        verify_onnx(pkg.package_dir, load_manifest(pkg.package_dir))   # never promote a broken package
    except ManifestError as exc:
        _err(f"models promote: {exc}")
        return 2
    promotions = Promotions.for_data_dir(config.node.data_dir, url=config.database.url)
    try:
        done = promotions.promote(name, version)
    finally:
        promotions.close()
    before = f" (was {done.previous})" if done.previous else ""
    print(f"{name}@{version} is now active{before}; restart the node (aenode serve) to load it;"
          f" roll back with: aenode models promote {name}@{done.previous or '<version>'}")
    return 0
