"""Series selection rules and volume loading (hand-made series; fast)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from aenode.load import LoadError, load_series
from aenode.select import SelectionRules, select_series
from aenode.store.meta import read_meta
from tests.inference.fakect import RLELossless, write_series

RULES = SelectionRules(slice_thickness_mm=[0.5, 3.0], min_slices=10, min_coverage_mm=20)


def infos(files):
    return [read_meta(f) for f in files]


def test_prefers_thinnest_then_kernel(tmp_path):
    _, thick, _ = write_series(tmp_path / "a", n=12, spacing=2.5, description="BODY 2.5", kernel="SOFT")
    thin_soft_uid, thin_soft, _ = write_series(tmp_path / "b", n=24, spacing=1.25, description="BODY 1.25", kernel="STANDARD")
    thin_lung_uid, thin_lung, _ = write_series(tmp_path / "c", n=24, spacing=1.25, description="LUNG 1.25", kernel="LUNG")
    sel = select_series(infos(thick + thin_soft + thin_lung), RULES)
    assert sel.selected is not None and sel.selected.series_uid == thin_lung_uid
    assert "preferred" in sel.skipped[thin_soft_uid]
    assert len(sel.skipped) == 2


def test_localizer_and_thick_series_skipped_with_reasons(tmp_path):
    loc_uid, loc, _ = write_series(tmp_path / "loc", n=2, image_type="ORIGINAL\\PRIMARY\\LOCALIZER", description="TOPO")
    thick_uid, thick, _ = write_series(tmp_path / "thick", n=30, spacing=5.0, description="CHEST 5mm")
    sel = select_series(infos(loc + thick), RULES)
    assert sel.selected is None
    assert "localizer" in sel.skipped[loc_uid]
    assert "slice thickness 5 mm outside 0.5-3 mm" in sel.skipped[thick_uid]
    assert sel.reason.startswith("no eligible series") and "localizer" in sel.reason


@pytest.mark.parametrize(
    "kwargs, expect",
    [
        ({"image_type": "DERIVED\\SECONDARY\\AXIAL"}, "ImageType DERIVED"),
        ({"modality": "MR"}, "modality MR"),
        ({"n": 5}, "5 slices, fewer than 10"),
        ({"spacing": 0.6, "thickness": 1.0, "n": 12}, "z coverage"),
        ({"orientation": (0, 1, 0, 0, 0, -1)}, "not axial"),
        ({"description": "MIP 10mm"}, "MIP"),
    ],
)
def test_ineligible_series_reasons(tmp_path, kwargs, expect):
    uid, files, _ = write_series(tmp_path, **kwargs)
    sel = select_series(infos(files), RULES)
    assert sel.selected is None
    assert expect in sel.skipped[uid]


def test_node_output_never_selected(tmp_path):
    uid, files, _ = write_series(tmp_path, n=20)
    rows = [dataclasses.replace(i, calling_ae="AENODE") for i in infos(files)]
    sel = select_series(rows, RULES, own_ae_titles=["AENODE"])
    assert sel.selected is None and sel.skipped[uid] == "the node's own output"
    rows = [dataclasses.replace(i, own_output=True) for i in infos(files)]
    assert select_series(rows, RULES).skipped[uid] == "the node's own output"


def test_index_returns_the_header_it_was_given(tmp_path):
    """The index stores and returns the one header record selection works on."""
    from aenode.store.index import Index

    uid, files, _ = write_series(tmp_path / "data" / "spool", n=3)
    index = Index.for_data_dir(tmp_path / "data")
    try:
        sent = infos(files)
        for h in sent:
            index.record_instance(h, h.path, 10, "CT1", received_at=5.0)
        got = {h.sop_instance_uid: h for h in index.instances(sent[0].study_uid)}
        for h in sent:
            back = got[h.sop_instance_uid]
            assert dataclasses.replace(back, path=None, calling_ae=None, size=None, received_at=None,
                                       revision=None) == dataclasses.replace(h, path=None)
            assert back.path == h.path and back.calling_ae == "CT1" and back.revision == 1
        assert select_series(got.values(), RULES.model_copy(update={"min_slices": 3, "min_coverage_mm": 0})
                             ).selected.series_uid == uid
    finally:
        index.close()


def test_load_sorts_and_rescales(tmp_path):
    _, files, vol = write_series(tmp_path, n=15)
    v = load_series(infos(list(reversed(files))))
    assert v.hu.dtype == np.int16 and v.shape == (15, 32, 32)
    np.testing.assert_array_equal(v.hu, vol)
    assert v.spacing_zyx == pytest.approx((2.0, 1.0, 1.0))
    assert v.warnings == []


def test_load_compressed(tmp_path):
    _, files, vol = write_series(tmp_path, n=12, transfer_syntax=RLELossless)
    np.testing.assert_array_equal(load_series(files).hu, vol)


def test_missing_slices_interpolated_and_reported(tmp_path):
    _, files, vol = write_series(tmp_path, n=40, skip=(10,))
    v = load_series(infos(files))
    assert v.shape == (40, 32, 32) and v.missing_slices == 1
    assert any("1 missing slice" in w for w in v.warnings)
    np.testing.assert_array_equal(v.hu[9], vol[9])
    np.testing.assert_array_equal(v.hu[11], vol[11])
    _, files, _ = write_series(tmp_path / "many", n=40, skip=tuple(range(5, 15)))
    with pytest.raises(LoadError, match="missing slice"):
        load_series(infos(files))


def test_duplicate_slices_reported(tmp_path):
    _, files, vol = write_series(tmp_path, n=12, duplicate=(3,))
    v = load_series(infos(files))
    assert v.shape == (12, 32, 32) and v.duplicate_slices == 1
    assert any("duplicate" in w for w in v.warnings)


def test_gantry_tilt_resampled_or_refused(tmp_path):
    _, files, vol = write_series(tmp_path, n=12, tilt_deg=15.0)
    v = load_series(infos(files), tilt="resample")
    assert v.tilt_deg == pytest.approx(15.0, abs=0.1)
    assert any("gantry tilt 15.0 deg: slices resampled" in w for w in v.warnings)
    # Slice k is shifted by k*2*tan(15 deg) mm in y; after resampling row 16 of slice 5
    # holds what row 16 + 2.68 of the original was (linear interpolation).
    with pytest.raises(LoadError, match="gantry tilt 15.0 deg .*refused"):
        load_series(infos(files), tilt="refuse")


def test_irregular_spacing_refused(tmp_path):
    _, files, _ = write_series(tmp_path, n=12)
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], ds.ImagePositionPatient[2] + 0.7]
    ds.save_as(files[5])
    with pytest.raises(LoadError, match="irregular slice spacing"):
        load_series(files)


def test_constant_pixels_refused(tmp_path):
    _, files, _ = write_series(tmp_path, n=12, constant=True)
    with pytest.raises(LoadError, match="all constant"):
        load_series(files)


def test_corrupt_pixel_data_refused(tmp_path):
    _, files, _ = write_series(tmp_path, n=12)
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 1000])
    with pytest.raises(LoadError, match=files[4].name):
        load_series(infos(files))


def test_pixel_bomb_volume_refused_before_allocation(tmp_path):
    """Issue 15, 2: 40 slices whose headers declare 4096 x 4096 pass the per-instance
    limits but not the volume bound: refused with the limit named, nothing allocated."""
    import tracemalloc

    _, files, _ = write_series(tmp_path, n=40, size=16)
    headers = [dataclasses.replace(h, rows=4096, columns=4096) for h in infos(files)]
    tracemalloc.start()
    with pytest.raises(LoadError) as info:
        load_series(headers, max_voxels=1000 * 768 * 768)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "max_volume_voxels" in info.value.reason and "40 x 4096 x 4096" in info.value.reason
    assert peak < 50 * 1024 * 1024
