"""Reconstruction kernel (resolution) and quantum noise with a kernel-specific noise power spectrum.

Filtered back-projection noise is not white: its noise power spectrum (NPS) is ~0 at zero
frequency (the ramp filter), rises and is cut by the kernel's apodisation, so it peaks at
~0.15-0.3 cycles/mm for soft-tissue kernels and ~0.5-0.8 cycles/mm for lung/bone kernels. Noise
here is white Gaussian noise shaped in the Fourier domain to NPS(f) ~ f exp(-(f/f0)^2) (peak at
f0/sqrt(2)), scaled to the kernel's SD at a reference voxel and dose, and then by
sqrt(reference thickness / thickness), 1/sqrt(relative dose) and the part of the NPS that the
pixel size resolves (coarse pixels cut the high frequencies: a coarse grid stands for a fine
reconstruction resampled to it, which is what a model's preprocessing sees). Noise comes from a small pool of
filtered 2-D tiles taken at random offsets per slice: as good as fresh noise to the eye and to a
CNN, and an order of magnitude cheaper than filtering the whole volume. Not modelled: noise
that grows toward the body centre and along the long axis of the body (photon starvation), streaks,
iterative reconstruction's blotchy texture, and noise correlation between overlapping slices.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft

KERNELS = {
    # name: (edge gain of the signal (<0: blur), noise SD in HU at 0.75 x 0.75 mm pixels, 1 mm slices and
    #        standard dose, generic DICOM ConvolutionKernel, NPS peak in cycles/mm)
    "smooth": (-1.0, 20.0, "STANDARD", 0.22),
    "standard": (0.0, 28.0, "DETAIL", 0.35),
    "sharp": (0.7, 60.0, "LUNG", 0.60),
    "very_sharp": (1.2, 95.0, "BONEPLUS", 0.75),
}
REF_PIXEL, REF_THICKNESS = 0.75, 1.0


def blur3(a: np.ndarray) -> np.ndarray:
    """In-plane [1 2 1]/4 x [1 2 1]/4 blur of the last two axes (edges replicate)."""
    b = a * np.float32(0.5)
    b[..., 1:, :] += a[..., :-1, :] * np.float32(0.25)
    b[..., :-1, :] += a[..., 1:, :] * np.float32(0.25)
    b[..., 0, :] += a[..., 0, :] * np.float32(0.25)
    b[..., -1, :] += a[..., -1, :] * np.float32(0.25)
    c = b * np.float32(0.5)
    c[..., :, 1:] += b[..., :, :-1] * np.float32(0.25)
    c[..., :, :-1] += b[..., :, 1:] * np.float32(0.25)
    c[..., :, 0] += b[..., :, 0] * np.float32(0.25)
    c[..., :, -1] += b[..., :, -1] * np.float32(0.25)
    return c


def apply_kernel(hu: np.ndarray, kernel: str) -> np.ndarray:
    """Kernel resolution of the signal: sharp kernels overshoot at edges (unsharp mask), smooth
    ones blur (one pass of blur3), standard leaves it."""
    gain = KERNELS[kernel][0]
    if gain == 0:
        return hu
    bl = blur3(hu)
    if gain < 0:
        return bl
    bl -= hu
    bl *= np.float32(-gain)
    bl += hu
    return bl


def _nps(f: np.ndarray, peak: float) -> np.ndarray:
    f0 = peak * np.sqrt(2.0)
    return f * np.exp(-((f / f0) ** 2))


@lru_cache(maxsize=64)
def resolved_fraction(kernel: str, pixel_mm: float) -> float:
    """Noise variance a pixel size resolves relative to the reference pixel (same kernel)."""
    peak = KERNELS[kernel][3]

    def var(px: float) -> float:
        f = np.fft.fftfreq(256, px)
        r = np.hypot(f[:, None], f[None, :])
        return float(_nps(r, peak).sum()) / px ** 2 / 256 ** 2

    return var(pixel_mm) / var(REF_PIXEL)


def noise_sd(kernel: str, pixel_mm: float, thickness_mm: float, dose: float = 1.0) -> float:
    """Noise SD (HU) of one reconstruction: kernel, pixel size, slice thickness, relative dose."""
    sd = KERNELS[kernel][1] * np.sqrt(REF_THICKNESS / max(thickness_mm, 0.3) / max(dose, 0.05))
    return float(np.clip(sd * np.sqrt(resolved_fraction(kernel, round(pixel_mm, 3))), 1.5, 400.0))


class NoisePool:
    """Pre-filtered noise tiles; `slice_noise(k)` returns a (ny, nx) view for slice k."""

    PAD = 48

    def __init__(self, seed: int, shape_yx: tuple[int, int], n_slices: int, kernel: str,
                 spacing_zyx: tuple[float, float, float], tiles: int = 4, thickness_mm: float | None = None,
                 dose: float = 1.0):
        rng = np.random.default_rng([seed, 71])
        ny, nx = shape_yx
        px = float(np.mean(spacing_zyx[1:]))
        sd = noise_sd(kernel, px, float(thickness_mm or spacing_zyx[0]), dose)
        h, w = sfft.next_fast_len(ny + self.PAD, real=True), sfft.next_fast_len(nx + self.PAD, real=True)
        t = rng.standard_normal((tiles, h, w), dtype=np.float32)
        fy = np.fft.fftfreq(h, spacing_zyx[1])[:, None]
        fx = np.fft.rfftfreq(w, spacing_zyx[2])[None, :]
        amp = np.sqrt(_nps(np.hypot(fy, fx), KERNELS[kernel][3])).astype(np.float32)
        t = sfft.irfft2(sfft.rfft2(t, workers=1) * amp, s=(h, w), workers=1).astype(np.float32)
        t *= np.float32(sd / float(t.std()))
        self.tiles = t
        self.choice = rng.integers(0, tiles, n_slices)
        self.oy = rng.integers(0, h - ny + 1, n_slices)
        self.ox = rng.integers(0, w - nx + 1, n_slices)
        self.flip = rng.integers(0, 2, n_slices).astype(bool)
        self.shape = shape_yx
        self.sd = sd

    def slice_noise(self, k: int) -> np.ndarray:
        ny, nx = self.shape
        v = self.tiles[self.choice[k], self.oy[k]:self.oy[k] + ny, self.ox[k]:self.ox[k] + nx]
        return v[::-1] if self.flip[k] else v
