"""What the ``/surveillance`` page shows, computed here so the web stage only renders it:
the epidemic curve (stacked bars per ISO week or day, by AI category, with the confirmed
share), the involvement distribution, shares by age band and sex, and the EARS series
and signals.  Geometry for server-side SVG (no JavaScript, nothing inline for the CSP)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aenode.surveil.ears import EarsPoint
from aenode.surveil.records import SurveillanceRecord
from aenode.surveil.store import Signal
from aenode.surveil.trends import Bucket, daily, involvement_histogram, shares, surge_series, weekly

PALETTE = {"typical": "#c0392b", "indeterminate": "#e67e22", "atypical": "#2980b9", "negative": "#7f8c8d",
           "none": "#bdc3c7"}
_EXTRA = ("#8e44ad", "#16a085", "#d35400", "#2c3e50", "#27ae60")

W, H, PAD_L, PAD_B, PAD_T = 760, 250, 40, 40, 22


@dataclass
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str
    title: str


@dataclass
class Chart:
    width: int
    height: int
    rects: list[Rect] = field(default_factory=list)
    labels: list[tuple[float, float, str]] = field(default_factory=list)   # x, y, text
    ticks: list[tuple[float, str]] = field(default_factory=list)           # y, text
    marks: list[tuple[float, float, str]] = field(default_factory=list)    # x, y, title (signals)


def _colour(cat: str, order: list[str]) -> str:
    return PALETTE.get(cat) or _EXTRA[order.index(cat) % len(_EXTRA)]


def epi_curve(buckets: list[Bucket], categories: list[str], signal_periods: set[str]) -> Chart:
    chart = Chart(W, H)
    if not buckets:
        return chart
    top = max(1, max(b.total for b in buckets))
    plot_h = H - PAD_B - PAD_T
    slot = (W - PAD_L) / len(buckets)
    bar = max(2.0, slot * 0.75)
    for i, b in enumerate(buckets):
        x = PAD_L + i * slot + (slot - bar) / 2
        y = float(H - PAD_B)
        for cat in categories:
            n = b.by_category.get(cat, 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            chart.rects.append(Rect(round(x, 1), round(y, 1), round(bar, 1), round(h, 1), _colour(cat, categories),
                                    f"{b.period}: {cat} {n}"))
        share = f"{100 * b.confirmed / b.total:.0f}%" if b.total else ""
        if len(buckets) <= 26 or i % max(1, len(buckets) // 13) == 0:
            chart.labels.append((round(x + bar / 2, 1), H - PAD_B + 14, b.period[-3:] if "W" in b.period
                                 else b.period[5:]))
        if share and b.confirmed:
            chart.labels.append((round(x + bar / 2, 1), H - PAD_B + 28, share))
        if b.period in signal_periods:
            chart.marks.append((round(x + bar / 2, 1), round(y - 8, 1), f"signal {b.period}"))
    for k in range(5):
        v = top * k / 4
        chart.ticks.append((round(H - PAD_B - plot_h * k / 4, 1), f"{v:.0f}"))
    return chart


def histogram(bins: list[tuple[str, int]]) -> Chart:
    chart = Chart(380, 180)
    top = max([1] + [n for _, n in bins])
    slot = (380 - PAD_L) / max(1, len(bins))
    for i, (label, n) in enumerate(bins):
        h = (180 - PAD_B - PAD_T) * n / top
        x = PAD_L + i * slot + slot * 0.1
        chart.rects.append(Rect(round(x, 1), round(180 - PAD_B - h, 1), round(slot * 0.8, 1), round(h, 1),
                                "#34495e", f"{label}: {n}"))
        chart.labels.append((round(x + slot * 0.4, 1), 180 - PAD_B + 14, label))
        chart.labels.append((round(x + slot * 0.4, 1), round(180 - PAD_B - h - 3, 1), str(n)))
    return chart


def page(records: list[SurveillanceRecord], signals: list[Signal], surge: list[str], method: str,
         by: str = "week") -> dict[str, Any]:
    """Template context for the page (and the JSON API)."""
    order: list[str] = []
    for r in records:
        c = r.category or "none"
        if c not in order:
            order.append(c)
    known = [c for c in PALETTE if c in order]
    categories = known + [c for c in order if c not in known]
    buckets = weekly(records) if by == "week" else daily(records)
    series: list[EarsPoint] = surge_series(records, surge)
    sig_weeks = {s.week for s in signals}
    return {
        "by": by, "total": len(records),
        "confirmed": sum(1 for r in records if r.confirmed_category is not None),
        "categories": [(c, _colour(c, categories)) for c in categories],
        "curve": epi_curve(buckets, categories, sig_weeks if by == "week" else set()),
        "buckets": [{"period": b.period, "total": b.total, "confirmed": b.confirmed,
                     "by_category": dict(b.by_category)} for b in buckets],
        "involvement": histogram(involvement_histogram(records)),
        "by_age": shares(records, surge, "age_band"), "by_sex": shares(records, surge, "sex"),
        "by_site": shares(records, surge, "site"), "surge": surge, "method": method,
        "ears": [{"week": p.period, "count": p.count, "c1": p.c1, "c2": p.c2, "c3": p.c3} for p in series],
        "signals": [{"week": s.week, "method": s.method, "count": s.count, "statistic": round(s.statistic, 2),
                     "created": s.created} for s in signals],
    }
