"""Parenchymal texture: a per-seed, spatially correlated field defined in millimetres.

Real inflated lung is not a flat -860 HU: lobules, small vessels below the resolution and
interstitium give a mottled texture of a few tens of HU at the millimetre scale, and GGO is
patchy. The field is a periodic 3-D tile (1 mm voxels, 64 mm period) of filtered Gaussian noise,
looked up at each voxel's physical position, so the same seed gives the same texture at any grid.
A tile instead of a whole-volume field because filtering a 300 x 512 x 512 field costs seconds;
the 64 mm period is far larger than the texture's correlation length and not visible under noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

N = 64        # tile size (voxels = mm)
FINE_SD = 22.0   # HU, correlation ~1-2 mm
COARSE_SD = 1.0  # unitless, correlation ~6 mm: modulates GGO density and margins


@lru_cache(maxsize=8)
def _tiles(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 53])
    g = rng.standard_normal((2, N, N, N)).astype(np.float32)
    fine = ndimage.gaussian_filter(g[0], 0.9, mode="wrap")
    fine = 0.75 * fine / fine.std() + 0.25 * ndimage.gaussian_filter(fine, 2.0, mode="wrap") / 0.3
    fine *= np.float32(FINE_SD / float(fine.std()))
    coarse = ndimage.gaussian_filter(g[1], 4.0, mode="wrap")
    coarse *= np.float32(COARSE_SD / float(coarse.std()))
    return fine.astype(np.float32), np.clip(coarse, -2.5, 2.5).astype(np.float32)


class ParenchymaTexture:
    def __init__(self, seed: int):
        self.fine, self.coarse = _tiles(int(seed))

    def sample(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fine HU, coarse unitless) fields on the (len(zs), len(ys), len(xs)) box, nearest 1 mm sample."""
        iz = np.floor(zs).astype(np.int64) % N
        iy = np.floor(ys).astype(np.int64) % N
        ix = np.floor(xs).astype(np.int64) % N
        out = []
        for t in (self.fine, self.coarse):
            out.append(t.take(iz, axis=0).take(iy, axis=1).take(ix, axis=2))
        return out[0], out[1]
