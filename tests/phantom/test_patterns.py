"""Each pattern puts its lesions where the RSNA definition says (measured on volume + masks)."""
import numpy as np
import pytest
from scipy import ndimage

from aenode.phantom import PATTERNS, VARIANTS

from .conftest import lesion, norm_depth

PNEUMONIA = (1, 2, 3, 4, 5, 8)


def _components(mask, min_vox=15):
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    return lab, [i + 1 for i, s in enumerate(sizes) if s >= min_vox]


def _axis_ratio(v, coords):
    pts = coords * np.array(v.spacing_zyx)
    ev = np.linalg.eigvalsh(np.cov(pts.T))
    return float(np.sqrt(ev[-1] / max(ev[0], 1e-6)))


def _lesions_inside_lungs(v):
    m = lesion(v, (1, 2, 3, 4, 5, 7, 8))
    assert np.all(v.lung_mask[m] > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_typical(vol_cache, seed):
    v = vol_cache("typical", seed)
    assert v.category == "Typical appearance" and v.pattern_variant == "peripheral-multifocal"
    m = lesion(v, (1, 2, 3))
    assert np.isin(v.lesion_mask, (4, 5, 6, 7, 8)).sum() == 0
    # bilateral
    assert (m & (v.lung_mask == 1)).sum() > 50 and (m & (v.lung_mask == 2)).sum() > 50
    # peripheral: mostly in the outer third of the lung
    nd = norm_depth(v)[m]
    assert np.mean(nd < 1 / 3) > 0.6, np.mean(nd < 1 / 3)
    # multifocal, rounded
    lab, comps = _components(m)
    assert len(comps) >= 3
    for c in comps:
        assert _axis_ratio(v, np.argwhere(lab == c)) < 4.0
    # GGO attenuation range (median over the lesion, noise and vessels included)
    ggo = v.hu[v.lesion_mask == 1]
    assert -750 <= np.median(ggo) <= -450
    # crazy-paving present
    assert (v.lesion_mask == 2).sum() > 0
    # lower-zone predominance: more lesion below the lungs' mid-height than above
    zl = np.nonzero(v.lung_mask.any(axis=(1, 2)))[0]
    mid = (zl[0] + zl[-1]) / 2  # z index grows downward (superior first)
    zz = np.nonzero(m)[0]
    assert (zz > mid).sum() > (zz <= mid).sum()
    _lesions_inside_lungs(v)


def test_typical_ggo_keeps_vessels_visible(vol_cache):
    v = vol_cache("typical", 0, noise=False)
    g = v.hu[v.lesion_mask == 1]
    # GGO is blended over the texture: denser vessels still stand out within the GGO
    assert np.percentile(g, 99) > np.median(g) + 150


def test_indeterminate_unilateral(vol_cache):
    v = vol_cache("indeterminate", 3, "unilateral")
    m = lesion(v)
    per = [(m & (v.lung_mask == k)).sum() for k in (1, 2)]
    assert max(per) > 200 and min(per) == 0
    assert set(np.unique(v.lesion_mask)) <= {0, 1}
    _lesions_inside_lungs(v)


def test_indeterminate_perihilar(vol_cache):
    v = vol_cache("indeterminate", 4, "perihilar")
    m = lesion(v)
    assert (m & (v.lung_mask == 1)).sum() > 100 and (m & (v.lung_mask == 2)).sum() > 100
    nd = norm_depth(v)[m]
    assert np.mean(nd < 1 / 3) < 0.35  # central, not peripheral
    assert np.mean(nd) > np.nanmean(norm_depth(v))
    _lesions_inside_lungs(v)


def test_indeterminate_diffuse(vol_cache):
    v = vol_cache("indeterminate", 5, "diffuse")
    m = lesion(v)
    for k in (1, 2):
        frac = (m & (v.lung_mask == k)).sum() / (v.lung_mask == k).sum()
        assert frac > 0.15
    # non-rounded: large confluent regions, not a handful of round blobs
    lab, comps = _components(m)
    sizes = sorted((np.sum(lab == c) for c in comps), reverse=True)
    assert sizes[0] > 0.2 * m.sum()
    assert set(np.unique(v.lesion_mask)) <= {0, 1}
    _lesions_inside_lungs(v)


def test_atypical_lobar_consolidation(vol_cache):
    v = vol_cache("atypical", 6, "lobar-consolidation")
    c = v.lesion_mask == 3
    assert c.sum() > 500
    assert np.isin(v.lesion_mask, (1, 2)).sum() == 0  # no GGO
    per = [(c & (v.lung_mask == k)).sum() for k in (1, 2)]
    assert min(per) == 0
    assert np.median(v.hu[c]) > -100
    _lesions_inside_lungs(v)


def test_atypical_tree_in_bud(vol_cache):
    v = vol_cache("atypical", 7, "tree-in-bud")
    n = v.lesion_mask == 4
    lab, comps = _components(n, min_vox=1)
    assert len(comps) >= 10
    assert np.isin(v.lesion_mask, (1, 2, 3)).sum() == 0
    _lesions_inside_lungs(v)


def test_atypical_cavitation(vol_cache):
    v = vol_cache("atypical", 8, "cavitation", noise=False)
    c = v.lesion_mask == 5
    assert c.sum() > 100
    assert np.isin(v.lesion_mask, (1, 2)).sum() == 0
    hu = v.hu[c]
    assert (hu < -900).sum() > 10 and (hu > -200).sum() > 10  # air lumen and solid wall
    lab, comps = _components(c)
    for comp in comps:  # the lumen sits inside the wall
        pts = np.argwhere(lab == comp)
        ctr = tuple(np.rint(pts.mean(axis=0)).astype(int))
        assert v.hu[ctr] < -900
    _lesions_inside_lungs(v)


def test_atypical_septal_effusion(vol_cache):
    v = vol_cache("atypical", 9, "septal-effusion")
    e = v.lesion_mask == 6
    assert e.sum() > 200
    assert np.all(v.lung_mask[e] == 0)  # fluid is in the pleural space
    ye = np.argwhere(e)[:, 1].mean()
    yl = np.argwhere(v.lung_mask > 0)[:, 1].mean()
    assert ye > yl  # dependent (posterior)
    assert -20 < np.median(v.hu[e]) < 50
    assert (v.lesion_mask == 8).sum() > 50
    assert np.isin(v.lesion_mask, (1, 2)).sum() == 0
    _lesions_inside_lungs(v)


def test_negative_normal(vol_cache):
    v = vol_cache("negative", 10, "normal")
    assert v.lesion_mask.max() == 0
    assert v.category == "Negative for pneumonia"


def test_negative_atelectasis(vol_cache):
    v = vol_cache("negative", 11, "atelectasis")
    assert set(np.unique(v.lesion_mask)) == {0, 7}
    a = v.lesion_mask == 7
    assert 0 < a.sum() < 0.03 * (v.lung_mask > 0).sum()
    assert np.argwhere(a)[:, 1].mean() > np.argwhere(v.lung_mask > 0)[:, 1].mean() + 5
    _lesions_inside_lungs(v)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_seed_picks_variants(pattern):
    from aenode.phantom.anatomy import sample_patient
    from aenode.phantom.lesions import plan_lesions
    from aenode.phantom.lungmodel import CoarseLung
    seen = {plan_lesions(CoarseLung(sample_patient(0)), pattern, s).variant for s in range(12)}
    assert seen == set(VARIANTS[pattern])


def test_same_patient_at_any_grid(vol_cache):
    a = vol_cache("typical", 1)
    b = vol_cache("typical", 1, shape=(48, 96, 96))
    va = (a.lesion_mask > 0).sum() * np.prod(a.spacing_zyx)
    vb = (b.lesion_mask > 0).sum() * np.prod(b.spacing_zyx)
    assert abs(va - vb) / va < 0.25
    la = (a.lung_mask > 0).sum() * np.prod(a.spacing_zyx)
    lb = (b.lung_mask > 0).sum() * np.prod(b.spacing_zyx)
    assert abs(la - lb) / la < 0.05
