"""The phantom against published statistics of real chest CT (docs/PHANTOM_REALISM.md).

One test per target, so a failure names the statistic that left its published range. The ranges
come from the literature (aenode/phantom/realism.py, SOURCES); when the generator misses one,
fix the generator, do not widen the range.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from aenode.phantom import anatomy, realism

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PHANTOM_REALISM.md"
SEEDS = (1, 2)          # 8 pattern studies + 2 clinical-grid Negatives + noise slabs: ~10 s
SLOW_SEEDS = tuple(range(1, 9))


@pytest.fixture(scope="module")
def measured() -> dict[str, float]:
    return realism.measure_all(SEEDS)


@pytest.fixture(scope="module")
def measured_sweep() -> dict[str, float]:
    return realism.measure_all(SLOW_SEEDS)


def _check(target: realism.Target, values: dict[str, float]) -> None:
    v = values.get(target.name, math.nan)
    assert target.contains(v), (
        f"{target.name} = {v:.4g} {target.unit}, outside the published range {target.range_text()} "
        f"({target.source_key}: {target.description})")


@pytest.mark.parametrize("target", realism.TARGETS, ids=[t.name for t in realism.TARGETS])
def test_target(target, measured):
    _check(target, measured)


@pytest.mark.slow
@pytest.mark.parametrize("target", realism.TARGETS, ids=[t.name for t in realism.TARGETS])
def test_target_sweep(target, measured_sweep):
    _check(target, measured_sweep)


def test_every_target_is_in_the_document_table():
    text = DOC.read_text()
    m = re.search(r"<!-- realism-table:start -->(.*?)<!-- realism-table:end -->", text, re.S)
    assert m, "docs/PHANTOM_REALISM.md lacks the realism-table markers"
    table = m.group(1)
    missing = [t.name for t in realism.TARGETS if f"`{t.name}`" not in table]
    assert not missing, f"not in the document's table (run scripts/phantom_realism.py --write-doc): {missing}"


def test_every_source_is_cited_in_the_document():
    text = DOC.read_text()
    used = {t.source_key for t in realism.TARGETS}
    assert used <= realism.SOURCES.keys()
    missing = [k for k in realism.SOURCES if f'<a id="{k}"></a>' not in text]
    assert not missing, f"references missing from docs/PHANTOM_REALISM.md: {missing}"


def test_tissue_codes_match_the_generator():
    assert realism.TISSUE == anatomy.TISSUE


def test_ranges_are_ordered():
    for t in realism.TARGETS:
        assert t.low <= t.high, t.name
        assert t.contains(t.low) and not t.contains(math.nan)


class _Vol:
    """A hand-made PhantomVolume stand-in: the measurements must find what was put in."""

    def __init__(self):
        self.spacing_zyx = (2.0, 1.0, 1.0)
        shape = (10, 64, 64)
        self.tissue = np.zeros(shape, np.uint8)
        self.hu = np.full(shape, -1000, np.int16)
        self.lung_mask = np.zeros(shape, np.uint8)
        self.lesion_mask = np.zeros(shape, np.uint8)
        self.lobe_mask = np.zeros(shape, np.uint8)
        self.tissue[:, 4:60, 4:60] = realism.TISSUE["muscle"]
        self.hu[:, 4:60, 4:60] = 45
        self.tissue[:, 10:54, 8:30] = realism.TISSUE["lung"]
        self.tissue[:, 10:54, 34:56] = realism.TISSUE["lung"]
        self.lung_mask[:, 10:54, 8:30] = 1
        self.lung_mask[:, 10:54, 34:56] = 2
        self.hu[self.lung_mask > 0] = -860
        self.lobe_mask[:5][self.lung_mask[:5] == 1] = 1
        self.lobe_mask[5:][self.lung_mask[5:] == 1] = 3
        self.lobe_mask[:5][self.lung_mask[:5] == 2] = 4
        self.lobe_mask[5:][self.lung_mask[5:] == 2] = 5
        # a peripheral GGO in the lower part of each lung
        for x0 in (8, 53):  # the three voxels next to each lung's lateral pleura
            self.lesion_mask[6:9, 20:40, x0:x0 + 3] = 1
            self.hu[6:9, 20:40, x0:x0 + 3] = -600
        self.tree = {"vessel_generations": 7, "airway_generations": 6}

        class _Acq:
            contrast = False
        self.acquisition = _Acq()


def test_measurements_on_a_known_volume():
    v = _Vol()
    t = realism.measure_tissues(v)
    assert t["muscle_median_hu"] == 45
    assert t["lung_volume_ml"] == pytest.approx((v.lung_mask > 0).sum() * 2.0 / 1000)
    assert t["lung_laa950_percent"] == 0.0
    les = realism.measure_lesions(v)
    assert les["ggo_median_hu"] == -600
    assert les["bilateral"] == 1.0 and les["lower_lobe_involved"] == 1.0 and les["lower_lobe_fraction"] == 1.0
    assert les["peripheral_fraction"] == 1.0 and les["peripheral_predominant"] == 1.0
    agg = realism.aggregate([("typical", {**t, **les})])
    assert agg["typical_bilateral_study_fraction"] == 1.0
    assert agg["ggo_median_hu"] == -600
    # a Typical study without lesions counts against the Typical shares
    agg = realism.aggregate([("typical", {**t, **les}), ("typical", {**t, "pneumonia_lesion_fraction": 0.0})])
    assert agg["typical_bilateral_study_fraction"] == 0.5 and agg["typical_lower_lobe_study_fraction"] == 0.5


def test_nps_peak_moves_up_with_a_sharper_noise_texture():
    rng = np.random.default_rng(0)

    class _V:
        def __init__(self, hu):
            self.hu = hu
            self.tissue = np.full(hu.shape, realism.TISSUE["muscle"], np.uint8)
            self.spacing_zyx = (1.0, 0.75, 0.75)

    white = rng.standard_normal((2, 128, 128)).astype(np.float32) * 20
    from scipy import ndimage
    smooth = ndimage.gaussian_filter(white, (0, 2.0, 2.0))
    sharp = white - ndimage.gaussian_filter(white, (0, 1.0, 1.0))
    zero = _V(np.zeros_like(white))
    f_smooth = realism.nps_peak(_V(smooth), zero)
    f_sharp = realism.nps_peak(_V(sharp), zero)
    assert f_sharp > f_smooth + 0.1
    assert realism.noise_sd(_V(white), zero) == pytest.approx(20, rel=0.1)
