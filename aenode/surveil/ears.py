"""Surge detection: the CDC's Early Aberration Reporting System methods C1, C2 and C3.

Reference: Hutwagner L, Thompson W, Seeman GM, Treadwell T. The bioterrorism preparedness
and response Early Aberration Reporting System (EARS). J Urban Health 2003;80(2 Suppl 1):
i89-96.  Definitions as in Fricker RD et al., Stat Med 2008;27:3407-29:

- C1: baseline = the 7 periods just before the current one; ``C1 = (x_t - mean) / sd``;
  signal when C1 > 3;
- C2: the same with a 2-period guard band (baseline t-9 .. t-3); signal when C2 > 3;
- C3: ``sum over t, t-1, t-2 of max(0, C2 - 1)``; signal when C3 > 2.

Here the period is one ISO week and ``x`` the weekly count of the surge categories
(Typical + Indeterminate by default).  EARS is for short baselines without seasonality,
which suits a single site that has just started (Farrington needs years of history).
The statistics are written by hand: the maintained implementation (R ``surveillance``
package, ``earsC``) has no Python counterpart on PyPI that we could use.

A flat baseline has sd = 0 and an infinite statistic; the sd is floored at
:data:`SD_FLOOR` (one case), so a jump from 0 to 4 cases signals and 0 to 1 does not.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

BASELINE = 7
SD_FLOOR = 1.0
THRESHOLD = {"C1": 3.0, "C2": 3.0, "C3": 2.0}


@dataclass(frozen=True)
class EarsPoint:
    """The three statistics for one period (None where the baseline is too short)."""

    period: str
    count: int
    c1: float | None
    c2: float | None
    c3: float | None
    mean_c2: float | None
    sd_c2: float | None

    def value(self, method: str) -> float | None:
        return {"C1": self.c1, "C2": self.c2, "C3": self.c3}[method]

    def signals(self, method: str, min_count: int = 1) -> bool:
        v = self.value(method)
        return v is not None and self.count >= min_count and v > THRESHOLD[method]


def _z(x: int, baseline: list[int]) -> tuple[float, float, float]:
    mean = statistics.fmean(baseline)
    sd = max(statistics.stdev(baseline), SD_FLOOR)
    return (x - mean) / sd, mean, sd


def ears(periods: list[str], counts: list[int]) -> list[EarsPoint]:
    """C1/C2/C3 for every period of a gap-free series (oldest first)."""
    if len(periods) != len(counts):
        raise ValueError("ears: periods and counts differ in length")
    c2s: list[float | None] = []
    out: list[EarsPoint] = []
    for t, x in enumerate(counts):
        c1 = c2 = mean2 = sd2 = None
        if t >= BASELINE:
            c1, _, _ = _z(x, counts[t - BASELINE:t])
        if t >= BASELINE + 2:
            c2, mean2, sd2 = _z(x, counts[t - BASELINE - 2:t - 2])
        c2s.append(c2)
        c3 = None
        if t >= 2 and all(v is not None for v in c2s[t - 2:t + 1]):
            c3 = sum(max(0.0, float(v) - 1.0) for v in c2s[t - 2:t + 1] if v is not None)
        out.append(EarsPoint(periods[t], x, c1, c2, c3, mean2, sd2))
    return out
