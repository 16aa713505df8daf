"""`generate_volume`: one synthetic chest CT volume in HU with its ground-truth masks.

Rendering order per slab of slices: anatomy (anatomy.py) with parenchymal texture (texture.py),
lesions and confounders (lesions.py), fissures, vessels and airways (vessels.py); then the slice
profile (a thick slice is the average of the anatomy over its thickness), breathing motion, the
kernel's resolution (noise.apply_kernel), and finally correlated noise (noise.NoisePool).
Everything before the noise is deterministic, so `noise=False` differs from the default only by
the noise.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from .acquisition import Acquisition
from .anatomy import HU, AnatomyMaps, PatientParams, fov_for, sample_patient
from .grid import Grid
from .lesions import CATEGORY, PATTERNS, plan_lesions, rasterize
from .lungmodel import CoarseLung
from .noise import KERNELS, NoisePool, apply_kernel
from .texture import ParenchymaTexture
from .vessels import AW_WALL, Airways, grow_tree, rasterize_segments, tree_stats

HU_MIN, HU_MAX = -1024, 3071  # what 12-bit unsigned storage with intercept -1024 can hold


@dataclass
class PhantomVolume:
    """A synthetic CT volume. Arrays are (z, y, x); slice 0 is the most superior (see grid.py).

    lung_mask: 0 outside, 1 right lung, 2 left lung (pleural fluid is not lung).
    lesion_mask: labels listed in lesions.LABELS (1 GGO ... 8 septal thickening).
    tissue: anatomy.TISSUE class of each voxel (noiseless geometry, what the voxel mostly is).
    lobe_mask: anatomy.LOBES (0 none, 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL).
    tree: generations and smallest calibres of the bronchovascular tree (vessels.tree_stats).
    acquisition: what was rendered (slice_thickness_mm filled in: the z spacing when none was asked)."""

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
    tissue: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))
    lobe_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))
    tree: dict = field(default_factory=dict)
    acquisition: Acquisition = field(default_factory=Acquisition)
    confounders: list = field(default_factory=list)
    blood_hu: float = HU["blood"]

    @property
    def contrast(self) -> bool:
        return self.acquisition.contrast

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
def _planning(seed: int) -> tuple[CoarseLung, np.ndarray, np.ndarray]:
    """Coarse lung model and bronchovascular tree depend on the seed only: cache them, because a
    study renders the same patient three times (thin series, thick series, localizer)."""
    cl = CoarseLung(sample_patient(seed))
    segs, aws = grow_tree(cl, seed)
    return cl, segs, aws


def blood_hu(seed: int, contrast: bool) -> float:
    """Blood attenuation: ~40 HU unenhanced; 150-350 HU in the arterial/portal phase of a contrast scan."""
    if not contrast:
        return HU["blood"]
    return float(np.random.default_rng([seed, 61]).uniform(150.0, 350.0))


def slice_profile(thickness: float, dz: float) -> np.ndarray:
    """Weights over neighbouring slices (offsets -m..m) of a rectangular slice profile of `thickness`
    sampled at spacing dz: the overlap of the slice with each neighbour's z extent."""
    if thickness <= dz * 1.01:
        return np.ones(1, np.float32)
    m = int(np.ceil((thickness / dz - 1.0) / 2.0))
    j = np.arange(-m, m + 1) * dz
    w = np.clip(np.minimum(j + dz / 2, thickness / 2) - np.maximum(j - dz / 2, -thickness / 2), 0, None)
    return (w / w.sum()).astype(np.float32)


def make_grid(p: PatientParams, shape_zyx, spacing_zyx, z_center: float | None = None,
              fov_scale: float = 1.0) -> tuple[Grid, float]:
    nz, ny, nx = (int(v) for v in shape_zyx)
    fov = float(np.clip(fov_for(p) * fov_scale, 300.0, 500.0))
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
                    z_center: float | None = None, threads: int | None = None,
                    acquisition: Acquisition | None = None) -> PhantomVolume:
    """Synthesise a chest CT of `pattern` for `seed` on any grid.

    spacing_zyx=None covers 300 mm in z and a patient-dependent FOV (times acquisition.fov_scale)
    in-plane. `variant` forces a pattern variant (else the seed picks one). `acquisition` (see
    acquisition.sample_acquisition) sets slice thickness, kernel class (it overrides `kernel`),
    dose and contrast; None means contiguous slices, `kernel`, standard dose, no contrast.
    `noise=False` gives the same image without the noise (slice profile, motion and the kernel's
    resolution included), so noisy - noiseless is exactly the noise.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    acq = acquisition if acquisition is not None else Acquisition(kernel=kernel)
    kernel = acq.kernel
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    seed = int(seed)
    p = sample_patient(seed)
    grid, fov = make_grid(p, shape_zyx, spacing_zyx, z_center, acq.fov_scale)
    cl, segs, aws = _planning(seed)
    plan = plan_lesions(cl, pattern, seed, variant)
    dz = grid.spacing_zyx[0]
    thick = float(acq.slice_thickness_mm or dz)
    zext = min(dz, thick)  # each rendered slice covers its own thickness (the profile blends neighbours)
    vessel = np.zeros(grid.shape_zyx, np.uint8)
    rasterize_segments(segs, grid, vessel, z_extent=zext)
    aw_out = aw_lum = None
    if len(aws):
        aw_out = np.zeros(grid.shape_zyx, np.uint8)
        aw_lum = np.zeros(grid.shape_zyx, np.uint8)
        rasterize_segments(aws, grid, aw_out, grow=1.0 + AW_WALL, z_extent=zext, also=((aw_lum, 1.0, 0.0),))
    canvas = rasterize(plan, cl, grid) if plan.prims else None
    blood = blood_hu(seed, acq.contrast)
    maps = AnatomyMaps(p, grid.ys, grid.xs, plan.pleural, blood_hu=blood)
    nz, ny, nx = grid.shape_zyx
    maps.dz = zext
    airways = Airways(cl)
    texture = ParenchymaTexture(seed)
    hu = np.empty(grid.shape_zyx, np.int16)
    lung = np.empty(grid.shape_zyx, np.uint8)
    lab = np.empty(grid.shape_zyx, np.uint8)
    tis = np.empty(grid.shape_zyx, np.uint8)
    lobe = np.empty(grid.shape_zyx, np.uint8)
    prof = slice_profile(thick, dz)
    halo = len(prof) // 2
    pool = NoisePool(seed, (ny, nx), nz, kernel, grid.spacing_zyx, thickness_mm=thick, dose=acq.dose) if noise else None
    zs = grid.zs
    slab = max(1, min(16, int(4_000_000 // (ny * nx))))
    # Breathing motion: slices below the carina get a faint copy shifted along y (doubling).
    mshift = int(round(plan.motion_mm / grid.spacing_zyx[1])) if plan.motion_mm else 0
    z_motion = p.z_carina - 30.0

    def work(k0: int) -> None:
        k1 = min(nz, k0 + slab)
        s = slice(k0, k1)
        h0, h1 = max(0, k0 - halo), min(nz, k1 + halo)
        sh = slice(h0, h1)
        h, lm, lb, tt, lo = maps.render_slab(
            zs[sh], vessel[sh], canvas.w[sh] if canvas else None, canvas.hu[sh] if canvas else None,
            canvas.lab[sh] if canvas else None, airways, aw_out[sh] if aw_out is not None else None,
            aw_lum[sh] if aw_lum is not None else None, texture)
        c0, c1 = k0 - h0, k0 - h0 + (k1 - k0)
        if halo:  # slice profile: average over the slice thickness (volume ends replicate)
            idx = np.arange(k0, k1)[:, None] + np.arange(-halo, halo + 1)[None, :]
            idx = np.clip(idx, h0, h1 - 1) - h0
            acc = np.zeros((k1 - k0,) + h.shape[1:], np.float32)
            for j, wj in enumerate(prof):
                acc += np.float32(wj) * h[idx[:, j]]
            h = acc
        else:
            h = h[c0:c1]
        if mshift:
            for k in range(k0, k1):
                if zs[k] < z_motion:
                    h[k - k0] = 0.7 * h[k - k0] + 0.3 * np.roll(h[k - k0], mshift, axis=0)
        h = apply_kernel(h, kernel)
        if pool is not None:
            for k in range(k0, k1):
                h[k - k0] += pool.slice_noise(k)
        np.rint(h, out=h)
        np.clip(h, HU_MIN, HU_MAX, out=h)
        hu[s] = h
        lung[s] = lm[c0:c1]
        lab[s] = lb[c0:c1]
        tis[s] = tt[c0:c1]
        lobe[s] = lo[c0:c1]

    nthreads = threads or min(2, os.cpu_count() or 1)
    starts = range(0, nz, slab)
    if nthreads > 1 and nz > slab:
        with ThreadPoolExecutor(nthreads) as ex:
            list(ex.map(work, starts))
    else:
        for k0 in starts:
            work(k0)
    tree = tree_stats(segs, aws)
    return PhantomVolume(
        hu=hu, lesion_mask=lab, lung_mask=lung, spacing_zyx=grid.spacing_zyx, origin=grid.origin_xyz,
        category=CATEGORY[pattern], pattern=pattern, pattern_variant=plan.variant, seed=seed, kernel=kernel,
        features=list(plan.features), patient=p.asdict(), fov_mm=fov, tissue=tis, lobe_mask=lobe, tree=tree,
        acquisition=replace(acq, slice_thickness_mm=thick), confounders=list(plan.confounders), blood_hu=blood)
