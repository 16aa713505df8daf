"""Voxel grid <-> patient (LPS, mm) coordinates.

Anatomy and lesions are defined in millimetres so that the same seed gives the same
patient at any resolution; a :class:`Grid` only says where the voxel centres are.
Index order is (z, y, x); slice k=0 is the most superior one (scanners send head first),
so the physical z of slice k is ``origin_xyz[2] - k * spacing_zyx[0]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]  # centre of voxel (0, 0, 0), LPS mm

    @property
    def zs(self) -> np.ndarray:
        return (self.origin_xyz[2] - np.arange(self.shape_zyx[0]) * self.spacing_zyx[0]).astype(np.float32)

    @property
    def ys(self) -> np.ndarray:
        return (self.origin_xyz[1] + np.arange(self.shape_zyx[1]) * self.spacing_zyx[1]).astype(np.float32)

    @property
    def xs(self) -> np.ndarray:
        return (self.origin_xyz[0] + np.arange(self.shape_zyx[2]) * self.spacing_zyx[2]).astype(np.float32)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_zyx))

    def index_range(self, axis: int, lo_mm: float, hi_mm: float) -> tuple[int, int]:
        """Half-open index range of voxels whose centres lie in [lo_mm, hi_mm] along axis (0=z,1=y,2=x)."""
        n = self.shape_zyx[axis]
        sp = self.spacing_zyx[axis]
        if axis == 0:  # z decreases with index
            a = (self.origin_xyz[2] - hi_mm) / sp
            b = (self.origin_xyz[2] - lo_mm) / sp
        else:
            o = self.origin_xyz[2 - axis]
            a = (lo_mm - o) / sp
            b = (hi_mm - o) / sp
        i0 = max(0, int(np.ceil(a - 1e-6)))
        i1 = min(n, int(np.floor(b + 1e-6)) + 1)
        return i0, max(i0, i1)

    def bbox(self, lo_xyz, hi_xyz) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) covering a box given in mm, or None if it misses the grid."""
        z0, z1 = self.index_range(0, lo_xyz[2], hi_xyz[2])
        y0, y1 = self.index_range(1, lo_xyz[1], hi_xyz[1])
        x0, x1 = self.index_range(2, lo_xyz[0], hi_xyz[0])
        if z1 <= z0 or y1 <= y0 or x1 <= x0:
            return None
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def voxel_to_lps(self) -> np.ndarray:
        """4x4 affine mapping (k, j, i, 1) index vectors to (x, y, z, 1) in LPS mm."""
        dz, dy, dx = self.spacing_zyx
        ox, oy, oz = self.origin_xyz
        return np.array([[0, 0, dx, ox], [0, dy, 0, oy], [-dz, 0, 0, oz], [0, 0, 0, 1]], dtype=np.float64)


def coords(grid: Grid, sl: tuple[slice, slice, slice]):
    """Broadcastable (Z, Y, X) float32 coordinate arrays for an index box."""
    z = grid.zs[sl[0]][:, None, None]
    y = grid.ys[sl[1]][None, :, None]
    x = grid.xs[sl[2]][None, None, :]
    return z, y, x
