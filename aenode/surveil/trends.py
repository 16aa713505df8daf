"""Trends over surveillance records: daily and ISO-week counts by category, shares by age
band, sex and site, the EARS series, and the signal alert document (pure functions)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from aenode.surveil.ears import THRESHOLD, EarsPoint, ears
from aenode.surveil.records import SurveillanceRecord, iso_week
from aenode.surveil.store import Signal

SIGNAL_SCHEMA = "aenode.surveillance.signal/v1"


@dataclass
class Bucket:
    """Counts of one day or week."""

    period: str
    by_category: Counter[str] = field(default_factory=Counter)
    confirmed: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_category.values())


def _category(r: SurveillanceRecord) -> str:
    return r.category or "none"


def daily(records: list[SurveillanceRecord]) -> list[Bucket]:
    out: dict[str, Bucket] = {}
    for r in records:
        if r.study_date is None:
            continue
        b = out.setdefault(r.study_date, Bucket(r.study_date))
        b.by_category[_category(r)] += 1
        b.confirmed += r.confirmed_category is not None
    return [out[k] for k in sorted(out)]


def _weeks_between(first: _dt.date, last: _dt.date) -> list[str]:
    start = first - _dt.timedelta(days=first.isoweekday() - 1)
    out = []
    d = start
    while d <= last:
        out.append(iso_week(d))
        d += _dt.timedelta(days=7)
    return out


def weekly(records: list[SurveillanceRecord]) -> list[Bucket]:
    """Every ISO week from the first to the last record, empty weeks included (EARS needs
    a gap-free series)."""
    dated = [r for r in records if r.study_date]
    if not dated:
        return []
    days = sorted(_dt.date.fromisoformat(r.study_date) for r in dated if r.study_date)
    out = {w: Bucket(w) for w in _weeks_between(days[0], days[-1])}
    for r in dated:
        b = out[r.week or iso_week(_dt.date.fromisoformat(str(r.study_date)))]
        b.by_category[_category(r)] += 1
        b.confirmed += r.confirmed_category is not None
    return list(out.values())


def shares(records: list[SurveillanceRecord], surge: list[str], by: str) -> dict[str, tuple[int, int]]:
    """group -> (surge-category count, all) for ``by`` in age_band, sex, site."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if by == "age_band":
            g = r.age_band or "unknown"
        elif by == "sex":
            g = r.sex
        elif by == "site":
            g = r.site_name or r.postal_code or "-"
        else:
            raise ValueError(f"shares: unknown grouping {by!r}")
        counts[g][0] += r.category in surge
        counts[g][1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(counts.items())}


def involvement_histogram(records: list[SurveillanceRecord], edges: tuple[int, ...] = (0, 5, 25, 50, 75, 101)
                          ) -> list[tuple[str, int]]:
    """Lung involvement % in the CT severity-score bands (<5, 5-25, 25-50, 50-75, >=75)."""
    out = []
    for lo, hi in zip(edges, edges[1:]):
        label = f"{lo}-{hi - 1 if hi == 101 else hi}%"
        out.append((label, sum(1 for r in records if r.involvement is not None and lo <= r.involvement < hi)))
    return out


def surge_series(records: list[SurveillanceRecord], surge: list[str]) -> list[EarsPoint]:
    weeks = weekly(records)
    return ears([b.period for b in weeks], [sum(b.by_category[c] for c in surge) for b in weeks])


def signal_key(site: str, model: str, week: str, method: str) -> str:
    text = "\x1f".join(("aenode-surveil-signal-v1", site, model, week, method))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def signals_of(points: list[EarsPoint], *, method: str, min_count: int, model: str, surge: list[str],
               site_name: str, postal_code: str, prefecture: str, node: str, link: str,
               now: float) -> list[Signal]:
    """One signal per week whose statistic crosses the method's threshold; the alert
    document carries counts and the site only (never patient data)."""
    out = []
    for p in points:
        if not p.signals(method, min_count):
            continue
        stat = float(p.value(method) or 0.0)
        key = signal_key(f"{site_name}|{postal_code}", model, p.period, method)
        payload = {
            "schema": SIGNAL_SCHEMA, "alert_id": key, "kind": "surveillance_signal",
            "week": p.period, "count": p.count, "categories": surge, "model": model,
            "method": f"EARS {method}", "statistic": round(stat, 3), "threshold": THRESHOLD[method],
            "baseline_mean": None if p.mean_c2 is None else round(p.mean_c2, 3),
            "baseline_sd": None if p.sd_c2 is None else round(p.sd_c2, 3),
            "site": {"name": site_name, "postal_code": postal_code, "prefecture": prefecture},
            "node": node, "link": link,
            "created": _dt.datetime.fromtimestamp(now, _dt.UTC).isoformat(timespec="seconds"),
            "disclaimer": "Aggregate AI decision-support surveillance signal; counts are unconfirmed "
                          "AI categories unless stated. No patient data.",
        }
        out.append(Signal(key, p.period, method, p.count, stat, json.dumps(payload, sort_keys=True), now))
    return out
