"""Pure parts: age bands, de-identified record keys, EARS statistics, findings from maps."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from aenode.infer.findings import describe_maps
from aenode.surveil.ears import ears
from aenode.surveil.records import age_band, age_years, iso_week, record_key, sex_code


@pytest.mark.parametrize("age,birth,expected", [
    ("045Y", None, 45), ("006M", None, 0), ("104W", None, 2), ("400D", None, 1),
    (None, "19530917", 70), (None, "19530320", 70), (None, "19530319", 71), ("", "20300101", None), ("bad", None, None)])
def test_age_years(age, birth, expected):
    assert age_years(age, birth, dt.date(2024, 3, 19)) == expected


def test_age_band_and_sex():
    assert [age_band(x) for x in (0, 9, 10, 45, 89, 90, 120, None)] == \
        ["0-9", "0-9", "10-19", "40-49", "80-89", "90+", "90+", None]
    assert [sex_code(x) for x in ("F", "m", "O", "", None, "X")] == ["F", "M", "O", "U", "U", "U"]
    assert iso_week(dt.date(2024, 12, 30)) == "2025-W01"


def test_record_key_is_stable_and_one_way():
    k = record_key("1.2.3.4", "m")
    assert k == record_key("1.2.3.4", "m") != record_key("1.2.3.4", "other")
    assert "1.2.3.4" not in k and len(k) == 32


def test_ears_flat_baseline_then_jump():
    counts = [1] * 11 + [6]
    pts = ears([f"W{i}" for i in range(12)], counts)
    assert [p.c1 for p in pts[:7]] == [None] * 7 and pts[8].c2 is None and pts[9].c2 == 0.0
    last = pts[-1]
    assert last.c1 == pytest.approx(5.0) and last.c2 == pytest.approx(5.0)   # sd floored at 1
    assert last.c3 == pytest.approx(4.0)                                    # (5-1) + 0 + 0
    assert last.signals("C1") and last.signals("C2") and last.signals("C3")
    assert not any(p.signals(m) for p in pts[:-1] for m in ("C1", "C2", "C3"))
    assert not last.signals("C2", min_count=7)


def test_ears_against_hand_computed_values():
    counts = [2, 4, 3, 5, 4, 6, 3, 4, 5, 9]
    pts = ears([str(i) for i in range(10)], counts)
    base1 = np.array(counts[2:9], dtype=float)
    assert pts[9].c1 == pytest.approx((9 - base1.mean()) / base1.std(ddof=1))
    base2 = np.array(counts[0:7], dtype=float)
    assert pts[9].c2 == pytest.approx((9 - base2.mean()) / base2.std(ddof=1))


def test_findings_from_maps():
    spacing = (2.0, 2.0, 2.0)
    lung = np.zeros((20, 40, 60), dtype=bool)
    lung[2:18, 5:35, 5:27] = True    # right lung (low x)
    lung[2:18, 5:35, 33:55] = True   # left lung
    lesion = np.zeros_like(lung)
    lesion[5:10, 6:9, 6:9] = True     # right, at the surface
    lesion[5:10, 6:9, 51:54] = True   # left, at the surface
    got = describe_maps(lesion, lung, spacing)
    assert got["laterality"] == "bilateral" and got["distribution"] == "peripheral"
    assert got["ggo"] is None and got["consolidation"] is None and got["crazy_paving"] is None
    one = np.zeros_like(lung)
    one[6:14, 16:24, 12:20] = True    # right lung, its centre: > 20 mm deep? depth up to ~11 vox = 22 mm
    got = describe_maps(one, lung, (4.0, 4.0, 4.0))
    assert got["laterality"] == "unilateral" and got["distribution"] in ("central", "diffuse")
    assert describe_maps(np.zeros_like(lung), lung, spacing)["laterality"] == "none"
