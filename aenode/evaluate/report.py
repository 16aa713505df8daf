"""The local validation report: ``report.json``, ``report.html`` and PNG figures.

Figures are drawn with matplotlib (its Agg backend, no display), imported only here so
the node itself never needs it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
from pathlib import Path

from aenode.evaluate.metrics import Case
from aenode.store.datadir import DataDir


def _fmt(x: object, pct: bool = True) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{100 * x:.1f} %" if pct else f"{x:.3f}"
    return html.escape(str(x))


def _figures(out: Path, doc: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes: list[str] = doc["classes"]
    m: list[list[int]] = doc["confusion"]
    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=100)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("model")
    ax.set_ylabel("radiologists")
    top = max((max(r) for r in m), default=0)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_title(f"Confusion matrix (n = {doc['n']})")
    fig.tight_layout()
    fig.savefig(out / "confusion.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=100)
    bins = [b for b in doc["reliability"] if b["n"]]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["accuracy"] for b in bins],
           width=[b["hi"] - b["lo"] for b in bins], alpha=0.6, edgecolor="black", label="accuracy per bin")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C1", label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("model confidence (top class)")
    ax.set_ylabel("accuracy")
    ece = doc["ece"]
    ax.set_title("Reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png")
    plt.close(fig)
    return ["confusion.png", "reliability.png"]


def write_report(out: Path, doc: dict, cases: list[Case]) -> list[Path]:
    """Write the report files into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    figures = _figures(out, doc)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{pc['n']}</td><td>{_fmt(pc['sensitivity'])}</td>"
        f"<td>{_fmt(pc['sensitivity_ci95'][0])} – {_fmt(pc['sensitivity_ci95'][1])}</td>"
        f"<td>{_fmt(pc['specificity'])}</td>"
        f"<td>{_fmt(pc['specificity_ci95'][0])} – {_fmt(pc['specificity_ci95'][1])}</td></tr>"
        for name, pc in doc["per_class"].items())
    splits = ""
    for key, groups in doc["split"].items():
        body = "".join(f"<tr><td>{html.escape(g)}</td><td>{s['n']}</td><td>{_fmt(s['accuracy'])}</td>"
                       f"<td>{_fmt(s['kappa'], False)}</td><td>{_fmt(s['ece'], False)}</td>"
                       f"<td>{_fmt(s['out_of_domain_rate'])}</td></tr>" for g, s in groups.items())
        splits += (f"<h3>By {html.escape(key.replace('_', ' '))}</h3><table><tr><th>group</th><th>n</th>"
                   f"<th>accuracy</th><th>kappa</th><th>ECE</th><th>out of domain</th></tr>{body}</table>")
    imgs = "".join(f'<img src="{f}" alt="{f}">' for f in figures)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Local validation: {html.escape(doc['model'])} {html.escape(doc['version'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #aaa;padding:.2em .6em;text-align:right}}img{{margin:.5em}}</style></head><body>
<h1>Local validation of {html.escape(doc['model'])} {html.escape(doc['version'])}</h1>
<p>Decision support only, not for diagnostic use. {doc['n']} studies scored against the radiologists' labels
({doc['not_scored']} without a model category, {doc['missing']} labelled but not found).</p>
<table><tr><th>accuracy</th><td>{_fmt(doc['accuracy'])} (95 % CI {_fmt(doc['accuracy_ci95'][0])} –
{_fmt(doc['accuracy_ci95'][1])})</td></tr>
<tr><th>Cohen's kappa</th><td>{_fmt(doc['kappa'], False)}</td></tr>
<tr><th>linear-weighted kappa</th><td>{_fmt(doc['kappa_linear'], False)}</td></tr>
<tr><th>expected calibration error</th><td>{_fmt(doc['ece'], False)}</td></tr>
<tr><th>out-of-domain rate</th><td>{_fmt(doc['out_of_domain_rate'])}</td></tr>
<tr><th>seconds per study</th><td>{doc['seconds_per_study']:.2f}</td></tr></table>
<h2>Per class (95 % Wilson intervals)</h2>
<table><tr><th>class</th><th>n</th><th>sensitivity</th><th>95 % CI</th><th>specificity</th><th>95 % CI</th></tr>
{rows}</table>
<h2>Figures</h2>{imgs}
<h2>Subgroups</h2>{splits}
</body></html>
"""
    (out / "report.html").write_text(page)
    return [out / "report.json", out / "report.html", *(out / f for f in figures)]


def publish_report(data_dir: str | Path, files: list[Path], doc: dict) -> Path:
    """Copy a written report under ``DataDir.reports`` and point ``latest_report`` at it,
    so the dashboard links the newest local validation.  Returns the report's folder."""
    layout = DataDir.of(data_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = re.sub(r"[^A-Za-z0-9@._-]", "_", f"{doc['model']}-{doc['version']}-{stamp}")
    dest = layout.reports / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)
    pointer = {"name": name, "model": doc["model"], "version": doc["version"], "n": doc["n"],
               "accuracy": doc["accuracy"], "kappa": doc["kappa"], "created": time.time()}
    tmp = layout.latest_report.with_suffix(".tmp")
    tmp.write_text(json.dumps(pointer, indent=2) + "\n")
    os.replace(tmp, layout.latest_report)
    return dest
