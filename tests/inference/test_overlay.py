"""The SC's lesion overlay is made for the key slices only (issue 11): same masks on those
slices as the full projection, slices that do show lesion, and much less work."""

from __future__ import annotations

import time

import numpy as np

from aenode.load.volume import load_series
from aenode.report.sc import choose_key_slices, key_slices
from aenode.select.rules import select_series
from aenode.store.meta import read_meta


def test_key_slice_overlay_matches_the_full_projection(heldout_studies, models):
    src = next(s for s in heldout_studies if s[0] == "typical")[2]
    model = models.get("covid-typicality")
    headers = [read_meta(f) for f in sorted(src.rglob("*.dcm")) if "ground_truth" not in f.parts]
    sel = select_series(headers, model.manifest.selection)
    assert sel.selected is not None
    volume = load_series(list(sel.selected.instances))
    pred = model.predict(volume)
    threshold = model.manifest.outputs.lesion_map.threshold

    t0 = time.perf_counter()
    full = pred.lesion_mask_on_series(volume, threshold)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = pred.lesion_scores_on_series(volume, threshold)
    shown = choose_key_slices(scores, volume.shape[0])
    masks = pred.lesion_masks_on_slices(volume, shown, threshold)
    t_keys = time.perf_counter() - t0

    assert full is not None and masks is not None and scores is not None
    assert len(shown) == 4 and sorted(masks) == shown
    for z in shown:
        assert np.array_equal(masks[z], full[z]), f"slice {z} differs from the full projection"
        assert full[z].any(), f"key slice {z} shows no lesion"
    # The cheap scores pick slices as affected as the full map's own choice (within 25 %).
    area = full.reshape(full.shape[0], -1).sum(axis=1)
    best = key_slices(full, volume.shape[0])
    assert area[shown].sum() >= 0.75 * area[best].sum()
    print(f"overlay: full projection {t_full:.3f} s, key slices only {t_keys:.3f} s "
          f"(ratio {t_full / max(t_keys, 1e-9):.1f})")
    assert t_keys < t_full
