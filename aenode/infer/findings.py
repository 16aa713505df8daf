"""Descriptive CT findings from a model's lesion and lung maps (for surveillance records).

A pure function of the maps on the model grid (z, y, x in LPS, so +x is the patient's
left): laterality (bilateral / unilateral / none) and distribution (peripheral / central /
diffuse).  Ground-glass, consolidation and crazy paving need a model that outputs them:
they stay ``None`` (unknown) rather than guessed from a lesion map.

Rules (stated so a reader can check them):
- no finding below :data:`MIN_LESION_ML` of lesion;
- the midline is the centre of the lung map's left-right extent (the grid's centre when
  there is no lung map); bilateral when each side holds >= :data:`SIDE_SHARE` of it;
- a lesion voxel is subpleural when it lies within :data:`SUBPLEURAL_MM` of the lung
  surface (Euclidean distance transform of the lung map, in mm); peripheral when
  >= 70 % of the lesion is subpleural, central when <= 30 %, else diffuse.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_LESION_ML = 0.5
SIDE_SHARE = 0.1
SUBPLEURAL_MM = 20.0


def describe_maps(lesion: np.ndarray, lung: np.ndarray | None,
                  spacing_zyx: tuple[float, float, float]) -> dict[str, object]:
    """``{"laterality", "distribution", "ggo", "consolidation", "crazy_paving"}``."""
    out: dict[str, object] = {"laterality": None, "distribution": None, "ggo": None, "consolidation": None,
                              "crazy_paving": None}
    lesion = np.asarray(lesion, dtype=bool)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    total = int(lesion.sum())
    if total * voxel_ml < MIN_LESION_ML:
        out["laterality"] = "none"
        return out
    xs = np.nonzero(lesion)[2]
    if lung is not None and np.asarray(lung).any():
        lung_b = np.asarray(lung, dtype=bool) | lesion
        lx = np.nonzero(lung_b.any(axis=(0, 1)))[0]
        mid = (float(lx[0]) + float(lx[-1])) / 2.0
    else:
        lung_b = None
        mid = (lesion.shape[2] - 1) / 2.0
    left = int((xs > mid).sum())
    right = int((xs < mid).sum())
    out["laterality"] = "bilateral" if min(left, right) >= SIDE_SHARE * total else "unilateral"
    if lung_b is not None:
        depth = ndimage.distance_transform_edt(lung_b, sampling=spacing_zyx)
        sub = float((depth[lesion] <= SUBPLEURAL_MM).mean())
        out["distribution"] = "peripheral" if sub >= 0.7 else "central" if sub <= 0.3 else "diffuse"
    return out
