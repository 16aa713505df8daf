"""Anatomy sanity: HU of tissues, lungs, air, table; habitus varies with the seed."""
import numpy as np
from scipy import ndimage

from aenode.phantom.anatomy import sample_patient


def _at(v, x, y, z):
    g = v.grid
    k = int(round((g.origin_xyz[2] - z) / g.spacing_zyx[0]))
    j = int(round((y - g.origin_xyz[1]) / g.spacing_zyx[1]))
    i = int(round((x - g.origin_xyz[0]) / g.spacing_zyx[2]))
    return v.hu[k, j, i]


def test_lung_parenchyma_hu(vol_cache):
    v = vol_cache("negative", 10, "normal")
    core = ndimage.binary_erosion(v.lung_mask > 0, iterations=2)
    h = v.hu[core]
    h = h[h < -600]  # away from vessels
    assert abs(float(h.mean()) + 850) < 60


def test_air_body_layers_bone(vol_cache):
    v = vol_cache("negative", 10, "normal", noise=False)
    p = sample_patient(10)
    z = p.z_carina - 40
    assert abs(float(v.hu[:, :6, :6].mean()) + 1000) < 5  # air outside the body
    noisy = vol_cache("negative", 10, "normal")
    assert abs(float(noisy.hu[:, :6, :6].mean()) + 1000) < 15
    x_fat = p.cx - p.a + p.skin + p.fat / 2
    assert -130 < _at(v, x_fat, p.cy, z) < -60 if p.fat > 8 else True
    x_mus = p.cx - p.a + p.skin + p.fat + p.muscle / 2
    assert 20 < _at(v, x_mus, p.cy, z) < 80
    assert _at(v, p.cx, p.y_vb, z) > 60  # vertebral body (marrow or disc)
    assert (v.hu > 500).sum() > 1000  # cortical bone: ribs, spine, sternum, scapulae
    hx, hy, hz = p.heart_c
    assert 20 < _at(v, hx, hy, hz + 10) < 70  # heart
    assert _at(v, p.cx, p.y_vb - 42.0, p.z_carina + 20) < -900  # trachea lumen
    # table under the patient
    j_table = int(round((p.table_y + 2.5 - v.origin[1]) / v.spacing_zyx[1]))
    assert (v.hu[:, j_table, :] > 100).mean() > 0.3


def test_lungs_separated_by_mediastinum(vol_cache):
    v = vol_cache("negative", 10, "normal")
    k = int(np.argmax((v.lung_mask > 0).sum(axis=(1, 2))))
    r = np.argwhere(v.lung_mask[k] == 1)
    l = np.argwhere(v.lung_mask[k] == 2)
    assert len(r) and len(l)
    assert l[:, 1].min() - r[:, 1].max() > 5  # columns: left lung (+x) right of the right lung
    lab, n = ndimage.label(v.lung_mask > 0)
    assert n >= 2
    # lungs end in domes, liver below the right dome
    p = sample_patient(10)
    assert 40 < _at(vol_cache("negative", 10, "normal", noise=False), p.cx - 0.4 * p.cav_a, p.ycc, p.z_dome_r - 25) < 75


def test_seed_changes_habitus(vol_cache):
    a, b = vol_cache("negative", 10, "normal"), vol_cache("negative", 12, "normal")
    va = (a.lung_mask > 0).sum() * np.prod(a.spacing_zyx)
    vb = (b.lung_mask > 0).sum() * np.prod(b.spacing_zyx)
    assert abs(va - vb) / va > 0.03
    assert a.patient["a"] != b.patient["a"] and a.patient["table_y"] != b.patient["table_y"]
    assert a.patient["cx"] != b.patient["cx"]
    assert 2.0e3 < va / 1000 < 8.5e3  # mL, adult range


def test_vessels_thin_toward_periphery(vol_cache):
    from aenode.phantom.volume import _planning
    cl, segs, _ = _planning(3)
    r = segs[:, 6]
    mid = (segs[:, :3] + segs[:, 3:6]) / 2
    d = cl.depth_at(mid)
    assert r[d < 8].mean() < r[d > 25].mean()
    assert r.min() < 0.6 and r.max() > 3.5 and len(segs) > 1000


def test_small_grid_is_fast():
    import time

    from aenode.phantom import generate_volume
    generate_volume("typical", 99, shape_zyx=(64, 128, 128))
    t = time.perf_counter()
    v = generate_volume("typical", 99, shape_zyx=(64, 128, 128), variant="peripheral-multifocal")
    assert time.perf_counter() - t < 1.5
    assert v.hu.dtype == np.int16 and v.lesion_mask.dtype == np.uint8 and v.hu.shape == (64, 128, 128)
