"""`generate_volume`: one synthetic chest CT volume in HU with its ground-truth masks."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .anatomy import AnatomyMaps, PatientParams, fov_for, sample_patient
from .grid import Grid
from .lesions import CATEGORY, PATTERNS, plan_lesions, rasterize
from .lungmodel import CoarseLung
from .noise import KERNELS, NoisePool, apply_kernel
from .vessels import Airways, grow_tree, rasterize_segments

HU_MIN, HU_MAX = -1024, 3071  # what 12-bit unsigned storage with intercept -1024 can hold


@dataclass
class PhantomVolume:
    """A synthetic CT volume. Arrays are (z, y, x); slice 0 is the most superior (see grid.py).

    lung_mask: 0 outside, 1 right lung, 2 left lung (pleural fluid is not lung).
    lesion_mask: labels listed in lesions.LABELS (1 GGO ... 8 septal thickening)."""

    hu: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin: tuple[float, float, float]  # LPS mm of voxel (0,0,0) = ImagePositionPatient of slice 0
    category: str
    pattern: str
    pattern_variant: str
    seed: int
    kernel: str
    features: list = field(default_factory=list)
    patient: dict = field(default_factory=dict)
    fov_mm: float = 0.0

    @property
    def grid(self) -> Grid:
        return Grid(tuple(self.hu.shape), self.spacing_zyx, self.origin)

    @property
    def z_positions(self) -> np.ndarray:
        return self.origin[2] - np.arange(self.hu.shape[0]) * self.spacing_zyx[0]

    @property
    def affine(self) -> np.ndarray:
        """(k, j, i, 1) -> LPS (x, y, z, 1)."""
        return self.grid.voxel_to_lps()


@lru_cache(maxsize=4)
def _planning(seed: int) -> tuple[CoarseLung, np.ndarray]:
    """Coarse lung model and vessel tree depend on the seed only: cache them, because a study
    renders the same patient three times (thin series, thick series, localizer)."""
    cl = CoarseLung(sample_patient(seed))
    return cl, grow_tree(cl, seed)


def make_grid(p: PatientParams, shape_zyx, spacing_zyx, z_center: float | None = None) -> tuple[Grid, float]:
    nz, ny, nx = (int(v) for v in shape_zyx)
    fov = fov_for(p)
    if spacing_zyx is None:
        spacing_zyx = (300.0 / nz, fov / ny, fov / nx)
    dz, dy, dx = (float(v) for v in spacing_zyx)
    zc = p.z_center if z_center is None else z_center
    # Reconstruction centre at the isocentre (x=0, y=0), like a scanner.
    origin = (-(nx - 1) / 2.0 * dx, -(ny - 1) / 2.0 * dy, zc + (nz - 1) / 2.0 * dz)
    ox, oy, oz = (round(float(o), 4) for o in origin)
    return Grid((nz, ny, nx), (dz, dy, dx), (ox, oy, oz)), dx * nx


def generate_volume(pattern: str, seed: int, *, shape_zyx=(300, 512, 512), spacing_zyx=None,
                    kernel: str = "sharp", variant: str | None = None, noise: bool = True,
                    z_center: float | None = None, threads: int | None = None) -> PhantomVolume:
    """Synthesise a chest CT of `pattern` for `seed` on any grid.

    spacing_zyx=None covers 300 mm in z and a patient-dependent FOV in-plane. `variant` forces a
    pattern variant (else the seed picks one). `noise=False` gives the noiseless, unfiltered HU.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    seed = int(seed)
    p = sample_patient(seed)
    grid, fov = make_grid(p, shape_zyx, spacing_zyx, z_center)
    cl, segs = _planning(seed)
    plan = plan_lesions(cl, pattern, seed, variant)
    vessel = np.zeros(grid.shape_zyx, np.uint8)
    rasterize_segments(segs, grid, vessel)
    canvas = rasterize(plan, cl, grid) if plan.prims else None
    maps = AnatomyMaps(p, grid.ys, grid.xs, plan.pleural)
    airways = Airways(cl)
    nz, ny, nx = grid.shape_zyx
    hu = np.empty(grid.shape_zyx, np.int16)
    lung = np.empty(grid.shape_zyx, np.uint8)
    lab = np.empty(grid.shape_zyx, np.uint8)
    pool = NoisePool(seed, (ny, nx), nz, kernel, grid.spacing_zyx) if noise else None
    zs = grid.zs
    slab = max(1, min(16, int(4_000_000 // (ny * nx))))

    def work(k0: int) -> None:
        k1 = min(nz, k0 + slab)
        s = slice(k0, k1)
        h, lm, lb = maps.render_slab(
            zs[s], vessel[s], canvas.w[s] if canvas else None, canvas.hu[s] if canvas else None,
            canvas.lab[s] if canvas else None, airways)
        if pool is not None:  # i.e. noise=True
            h = apply_kernel(h, kernel)
            for k in range(k0, k1):
                h[k - k0] += pool.slice_noise(k)
        np.rint(h, out=h)
        np.clip(h, HU_MIN, HU_MAX, out=h)
        hu[s] = h
        lung[s] = lm
        lab[s] = lb

    nthreads = threads or min(2, os.cpu_count() or 1)
    starts = range(0, nz, slab)
    if nthreads > 1 and nz > slab:
        with ThreadPoolExecutor(nthreads) as ex:
            list(ex.map(work, starts))
    else:
        for k0 in starts:
            work(k0)
    return PhantomVolume(
        hu=hu, lesion_mask=lab, lung_mask=lung, spacing_zyx=grid.spacing_zyx, origin=grid.origin_xyz,
        category=CATEGORY[pattern], pattern=pattern, pattern_variant=plan.variant, seed=seed, kernel=kernel,
        features=list(plan.features), patient=p.asdict(), fov_mm=fov)
