"""The anatomy and acquisition physics added for realism: lobes and fissures, the bronchovascular
tree, parenchyma, contrast, slice profile, kernel noise, confounders, determinism."""
import numpy as np
from scipy import ndimage

from aenode.phantom import generate_volume
from aenode.phantom.acquisition import VENDORS, Acquisition, sample_acquisition
from aenode.phantom.anatomy import TISSUE
from aenode.phantom.lesions import plan_lesions
from aenode.phantom.noise import NoisePool
from aenode.phantom.volume import _planning, slice_profile

SMALL = (72, 160, 160)


def test_parenchyma_hu_texture_and_gravity(vol_cache):
    v = vol_cache("negative", 10, "normal", noise=False)
    par = v.tissue == TISSUE["lung"]
    h = v.hu[par].astype(float)
    assert -910 <= np.median(h) <= -850  # inflated lung (published range: docs/PHANTOM_REALISM.md)
    tex = h[h > -950]  # the seed may have emphysema (a confounder), which is also "lung"
    q25, q75 = np.percentile(tex, [25, 75])  # robust SD: partial-volume vessel voxels make a long upper tail
    assert 10 < (q75 - q25) / 1.349 < 45  # correlated texture of a few tens of HU, not a flat solid
    # dependent (posterior, large y) lung denser than non-dependent, by tens of HU
    rows = np.nonzero(par)[1]
    lo, hi = np.percentile(rows, [25, 75])
    ant = v.hu[par][rows < lo].astype(float).mean()
    post = v.hu[par][rows > hi].astype(float).mean()
    assert 20 < post - ant < 70


def test_lobes_and_fissures(vol_cache):
    v = vol_cache("negative", 10, "normal", noise=False)
    lobes = np.bincount(v.lobe_mask[v.lung_mask > 0], minlength=6)
    assert lobes[0] == 0 and all(lobes[1:] > 0)  # every lung voxel is in one of five lobes
    assert lobes[2] < lobes[1] and lobes[2] < lobes[3]  # the middle lobe is the smallest right lobe
    assert set(np.unique(v.lobe_mask[v.lung_mask == 1])) == {1, 2, 3}
    assert set(np.unique(v.lobe_mask[v.lung_mask == 2])) == {4, 5}
    fis = v.tissue == TISSUE["fissure"]
    assert fis.sum() > 200
    # fissure voxels lie between lobes: their neighbourhood holds two lobe codes
    lo_max = ndimage.maximum_filter(v.lobe_mask, size=3)
    lo_min = ndimage.minimum_filter(np.where(v.lobe_mask > 0, v.lobe_mask, 9), size=3)
    assert np.mean((lo_max > lo_min)[fis]) > 0.8
    # and are denser than the parenchyma around them (thin sheets with partial volume)
    assert np.median(v.hu[fis]) > np.median(v.hu[v.tissue == TISSUE["lung"]]) + 100


def test_bronchovascular_tree_depth():
    cl, segs, aws = _planning(3)
    v = generate_volume("negative", 3, shape_zyx=SMALL, variant="normal", noise=False, threads=1)
    t = v.tree
    assert t["vessel_generations"] >= 6 and t["airway_generations"] >= 5
    assert t["min_vessel_radius_mm"] <= 1.0 and t["min_airway_lumen_radius_mm"] <= 1.5
    # radius tapers with generation
    r_by_gen = [segs[segs[:, 7] == g, 6].mean() for g in (1, 3, 5)]
    assert r_by_gen[0] > r_by_gen[1] > r_by_gen[2]
    # airways are lumens with walls, rendered inside the lungs
    assert (v.tissue == TISSUE["airway_lumen"]).sum() > 50 and (v.tissue == TISSUE["airway_wall"]).sum() > 50
    assert np.median(v.hu[v.tissue == TISSUE["airway_lumen"]]) < -700
    # bronchi run beside arteries: each airway segment's midpoint is near a vessel segment
    amid = (aws[:, :3] + aws[:, 3:6]) / 2
    vmid = (segs[:, :3] + segs[:, 3:6]) / 2
    d = np.sqrt(((amid[:, None, :] - vmid[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert np.median(d) < 15.0


def test_vessels_visible_inside_ggo(vol_cache):
    v = vol_cache("typical", 0, noise=False)
    ggo = v.lesion_mask == 1
    ves_in = ggo & (v.tissue == TISSUE["lung_vessel"])
    assert ves_in.sum() > 10
    assert np.median(v.hu[ves_in]) > np.median(v.hu[ggo & ~ves_in]) + 150
    assert -700 <= np.median(v.hu[ggo & (v.tissue == TISSUE["lesion"])]) <= -300


def test_contrast_raises_blood_hu():
    a = generate_volume("negative", 5, shape_zyx=SMALL, noise=False, threads=1, acquisition=Acquisition(contrast=False))
    b = generate_volume("negative", 5, shape_zyx=SMALL, noise=False, threads=1, acquisition=Acquisition(contrast=True))
    blood = a.tissue == TISSUE["blood"]
    assert blood.sum() > 1000 and np.array_equal(blood, b.tissue == TISSUE["blood"])
    assert 25 < np.median(a.hu[blood]) < 60
    assert 150 <= np.median(b.hu[blood]) <= 350 and b.contrast and not a.contrast
    fat = a.tissue == TISSUE["fat"]
    assert -120 < np.median(a.hu[fat]) < -80 and np.median(b.hu[fat]) == np.median(a.hu[fat])


def test_thick_slice_blurs_small_vessels():
    kw = dict(shape_zyx=(80, 160, 160), spacing_zyx=(1.0, 2.0, 2.0), noise=False, threads=1)
    thin = generate_volume("negative", 6, acquisition=Acquisition(slice_thickness_mm=1.0, kernel="standard"), **kw)
    thick = generate_volume("negative", 6, acquisition=Acquisition(slice_thickness_mm=5.0, kernel="standard"), **kw)
    ves = thin.tissue == TISSUE["lung_vessel"]
    assert ves.sum() > 100
    # the same vessel voxels lose contrast against the lung when the slice is 5 mm thick
    assert np.median(thick.hu[ves]) < np.median(thin.hu[ves]) - 60
    assert np.array_equal(thin.lung_mask, thick.lung_mask)  # masks are geometry, not image
    w = slice_profile(5.0, 1.0)
    assert len(w) == 5 and abs(w.sum() - 1) < 1e-6 and len(slice_profile(1.0, 2.5)) == 1


def _nps_peak(kernel: str, px: float = 0.6) -> tuple[float, float]:
    pool = NoisePool(1, (256, 256), 8, kernel, (1.0, px, px))
    f = np.fft.fftfreq(256, px)
    r = np.hypot(f[:, None], f[None, :])
    ps = sum(np.abs(np.fft.fft2(pool.slice_noise(k))) ** 2 for k in range(8))
    bins = np.linspace(0, r.max(), 40)
    prof = ndimage.mean(ps, labels=np.digitize(r, bins), index=np.arange(1, len(bins)))
    return float(bins[int(np.nanargmax(prof))] + (bins[1] - bins[0]) / 2), float(pool.slice_noise(0).std())


def test_noise_power_spectrum_by_kernel_and_dose():
    ps, sd_s = _nps_peak("smooth")
    pl, sd_l = _nps_peak("sharp")
    assert 0.12 <= ps <= 0.35 and 0.45 <= pl <= 0.85, (ps, pl)
    assert sd_l > 2 * sd_s
    lo = NoisePool(1, (128, 128), 2, "sharp", (1.0, 0.7, 0.7), dose=0.25).sd
    hi = NoisePool(1, (128, 128), 2, "sharp", (1.0, 0.7, 0.7), dose=1.0).sd
    assert abs(lo / hi - 2.0) < 0.05  # SD ~ 1/sqrt(dose)
    # noise is correlated, not white: neighbouring pixels of the smooth kernel's noise agree
    n = NoisePool(2, (128, 128), 1, "smooth", (1.0, 0.7, 0.7)).slice_noise(0)
    assert np.corrcoef(n[:, 1:].ravel(), n[:, :-1].ravel())[0, 1] > 0.3


def test_noise_is_the_only_difference():
    acq = Acquisition(slice_thickness_mm=3.0, kernel="sharp", dose=0.5)
    a = generate_volume("typical", 8, shape_zyx=SMALL, spacing_zyx=(2.0, 2.2, 2.2), threads=1, acquisition=acq)
    b = generate_volume("typical", 8, shape_zyx=SMALL, spacing_zyx=(2.0, 2.2, 2.2), threads=1, acquisition=acq,
                        noise=False)
    d = a.hu.astype(float) - b.hu
    air = b.hu[:, :8, :8] <= -1000
    assert abs(d.mean()) < 2.0 and d.std() > 3.0
    assert np.array_equal(a.tissue, b.tissue) and np.array_equal(a.lesion_mask, b.lesion_mask)
    assert air.any()


def test_confounders_in_negatives():
    cl = _planning(11)[0]
    found = {}
    for seed in range(40):
        plan = plan_lesions(_planning(seed)[0] if seed < 3 else cl, "negative", seed, "normal")
        for c in plan.confounders:
            found.setdefault(c.split("-")[-1], seed)
    assert {"emphysema", "scar", "atelectasis", "motion"} <= set(found), found
    # emphysema renders as low-attenuation areas below -950 HU inside the lungs
    seed = next(s for s in range(40) if any("emphysema" in c for c in plan_lesions(
        _planning(s)[0], "negative", s, "normal").confounders))
    v = generate_volume("negative", seed, shape_zyx=SMALL, variant="normal", noise=False, threads=1)
    assert any("emphysema" in c for c in v.confounders)
    assert (v.hu[v.lung_mask > 0] < -950).sum() > 50
    assert not np.isin(v.lesion_mask, (1, 2, 3, 4, 5, 8)).any()  # confounders are not pneumonia


def test_determinism_per_seed():
    acq = sample_acquisition(21)
    a = generate_volume("atypical", 21, shape_zyx=(40, 96, 96), threads=2, acquisition=acq)
    b = generate_volume("atypical", 21, shape_zyx=(40, 96, 96), threads=1, acquisition=acq)
    for k in ("hu", "tissue", "lobe_mask", "lesion_mask", "lung_mask"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.tree == b.tree and a.confounders == b.confounders
    c = generate_volume("atypical", 22, shape_zyx=(40, 96, 96), threads=1, acquisition=acq)
    assert not np.array_equal(a.hu, c.hu)


def test_sample_acquisition_covers_scanners():
    acqs = [sample_acquisition(s) for s in range(300)]
    assert acqs[7] == sample_acquisition(7)
    th = [a.slice_thickness_mm for a in acqs]
    assert min(th) <= 0.7 and max(th) == 5.0
    assert {a.manufacturer for a in acqs} == set(VENDORS)
    assert {a.kernel for a in acqs} == {"smooth", "standard", "sharp", "very_sharp"}
    assert any(a.contrast for a in acqs) and not all(a.contrast for a in acqs)
    for a in acqs:
        assert a.kernel_name in VENDORS[a.manufacturer][1][a.kernel]
        assert 0.2 <= a.dose <= 1.7 and 0.9 <= a.fov_scale <= 1.15


def test_habitus_varies_arms_and_fat():
    from aenode.phantom.anatomy import sample_patient
    ps = [sample_patient(s) for s in range(200)]
    assert 0.05 < np.mean([p.arms_down for p in ps]) < 0.4
    fat = [p.fat for p in ps]
    assert min(fat) < 8 and max(fat) > 25
    s = next(i for i, p in enumerate(ps) if p.arms_down)
    v = generate_volume("negative", s, shape_zyx=(24, 128, 128), noise=False, threads=1)
    # an arm beside the chest: bone (humerus) lateral to the body outline on a mid slice
    k = 12
    body = ndimage.binary_fill_holes(v.hu[k] > -500)
    lab, n = ndimage.label(body)
    assert n >= 3  # trunk and two arms


def test_lobar_consolidation_fills_one_real_lobe():
    v = generate_volume("atypical", 4, shape_zyx=SMALL, variant="lobar-consolidation", noise=False, threads=1)
    cons = v.lesion_mask == 3
    assert cons.sum() > 200
    lobes = np.bincount(v.lobe_mask[cons], minlength=6)
    main = int(np.argmax(lobes))
    assert main > 0 and lobes[main] > 0.95 * cons.sum()  # bounded by the fissures
    assert -100 <= np.median(v.hu[cons & (v.tissue == TISSUE["lesion"])]) <= 100
    assert (cons & (v.tissue == TISSUE["airway_lumen"])).sum() > 5  # air bronchograms
