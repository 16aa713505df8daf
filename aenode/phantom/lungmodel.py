"""A coarse (4 mm) rasterisation of the lungs used to *plan* vessels and lesions.

Planning on a fixed physical grid (not the output grid) keeps the plan, and so the
patient, identical whatever resolution the caller asks for.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import AnatomyMaps, PatientParams, lobe_of

STEP = 4.0


class CoarseLung:
    def __init__(self, p: PatientParams):
        self.p = p
        x0, x1 = p.cx - p.a, p.cx + p.a
        y0, y1 = p.cy - p.b, p.cy + p.b
        z1, z0 = p.z_apex + 8.0, p.z_lowest_lung - 8.0
        self.xs = np.arange(x0, x1 + STEP, STEP, dtype=np.float32)
        self.ys = np.arange(y0, y1 + STEP, STEP, dtype=np.float32)
        self.zs = np.arange(z1, z0 - STEP, -STEP, dtype=np.float32)  # descending like the output grid
        maps = AnatomyMaps(p, self.ys, self.xs)
        lab = np.zeros((len(self.zs), len(self.ys), len(self.xs)), np.uint8)
        wy, wx = maps.win
        lab[:, wy, wx] = maps.lung_labels(self.zs)
        self.labels = lab
        self.lobes = lobe_of(p, lab, self.xs[None, None, :], self.ys[None, :, None], self.zs[:, None, None])
        # Depth below the pleura (mm), per lung.
        self.depth = (ndimage.distance_transform_edt(lab > 0) * STEP).astype(np.float32)
        self._x0, self._y0, self._z0 = float(self.xs[0]), float(self.ys[0]), float(self.zs[0])
        zz = np.nonzero(lab.any(axis=(1, 2)))[0]
        self.z_top = float(self.zs[zz[0]]) if len(zz) else p.z_apex
        self.z_bottom = float(self.zs[zz[-1]]) if len(zz) else p.z_lowest_lung

    def _idx(self, pts: np.ndarray):
        pts = np.atleast_2d(pts)
        i = np.rint((pts[:, 0] - self.xs[0]) / STEP).astype(int)
        j = np.rint((pts[:, 1] - self.ys[0]) / STEP).astype(int)
        k = np.rint((self.zs[0] - pts[:, 2]) / STEP).astype(int)
        ok = (i >= 0) & (i < len(self.xs)) & (j >= 0) & (j < len(self.ys)) & (k >= 0) & (k < len(self.zs))
        return k.clip(0, len(self.zs) - 1), j.clip(0, len(self.ys) - 1), i.clip(0, len(self.xs) - 1), ok

    def at(self, pt) -> tuple[int, float]:
        """(label, depth) at one xyz point; plain Python because the tree grower calls it ~20k times."""
        i = int(round((float(pt[0]) - self._x0) / STEP))
        j = int(round((float(pt[1]) - self._y0) / STEP))
        k = int(round((self._z0 - float(pt[2])) / STEP))
        nz, ny, nx = self.labels.shape
        if 0 <= i < nx and 0 <= j < ny and 0 <= k < nz:
            return int(self.labels[k, j, i]), float(self.depth[k, j, i])
        return 0, 0.0

    def label_at(self, pts: np.ndarray) -> np.ndarray:
        k, j, i, ok = self._idx(pts)
        return np.where(ok, self.labels[k, j, i], 0)

    def depth_at(self, pts: np.ndarray) -> np.ndarray:
        k, j, i, ok = self._idx(pts)
        return np.where(ok, self.depth[k, j, i], 0.0)

    def lobe_at(self, pts: np.ndarray) -> np.ndarray:
        k, j, i, ok = self._idx(pts)
        return np.where(ok, self.lobes[k, j, i], 0)

    def points(self, label: int | None = None) -> np.ndarray:
        """(N, 5) lung voxels: x y z (mm), depth below the pleura (mm), lobe code."""
        m = self.labels > 0 if label is None else self.labels == label
        k, j, i = np.nonzero(m)
        return np.stack([self.xs[i], self.ys[j], self.zs[k], self.depth[k, j, i], self.lobes[k, j, i]], axis=1)
