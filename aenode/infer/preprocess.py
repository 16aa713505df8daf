"""Turn a CT volume into a model's input tensor, and model-grid maps back onto the series.

Everything a manifest's ``[preprocessing]`` declares happens in :func:`preprocess`, one
function, so it can be swapped for a GPU implementation without touching its callers.
The same function prepares the training data (``training/``), so the model sees at
training time exactly what it sees in service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from aenode.infer.manifest import Preprocessing
from aenode.load.volume import Volume


@dataclass(frozen=True)
class ModelGrid:
    """Where the model's voxels lie in patient space (LPS, identity direction)."""

    size_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]

    def reference(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        img = sitk.Image([int(self.size_zyx[2]), int(self.size_zyx[1]), int(self.size_zyx[0])], pixel_type)
        img.SetSpacing((self.spacing_zyx[2], self.spacing_zyx[1], self.spacing_zyx[0]))
        img.SetOrigin(self.origin_xyz)
        return img

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0


def _axis_map(direction: np.ndarray) -> list[int]:
    """For each image axis (x, y, z index order), the patient axis it runs along most."""
    return [int(np.argmax(np.abs(direction[:, i]))) for i in range(3)]


def model_grid(image: sitk.Image, prep: Preprocessing, size_zyx: tuple[int, int, int]) -> ModelGrid:
    return grid_for(image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                    np.array(image.GetDirection()).reshape(3, 3), prep, size_zyx)


def grid_for(size_xyz: tuple[int, ...], spacing_xyz: tuple[float, ...], origin: tuple[float, ...],
             direction: np.ndarray, prep: Preprocessing, size_zyx: tuple[int, int, int]) -> ModelGrid:
    """The model grid of a series given by its geometry (sizes and spacings in x, y, z index
    order, SimpleITK's), centred on the series."""
    size = np.array(size_xyz, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    sp = np.array(spacing_xyz, dtype=np.float64)
    centre = np.asarray(origin, dtype=np.float64) + direction @ (sp * (size - 1) / 2.0)
    if prep.mode == "spacing":
        assert prep.spacing_mm is not None
        spacing_zyx = tuple(float(v) for v in prep.spacing_mm)
    else:
        # "fit": the series' physical extent along each patient axis onto the input size
        amap = _axis_map(direction)
        extent_xyz = [0.0, 0.0, 0.0]
        for i in range(3):
            extent_xyz[amap[i]] = size[i] * sp[i]
        spacing_zyx = (extent_xyz[2] / size_zyx[0], extent_xyz[1] / size_zyx[1], extent_xyz[0] / size_zyx[2])
    sp_xyz = np.array([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]])
    n_xyz = np.array([size_zyx[2], size_zyx[1], size_zyx[0]], dtype=np.float64)
    origin_out = centre - sp_xyz * (n_xyz - 1) / 2.0
    return ModelGrid(tuple(int(v) for v in size_zyx), spacing_zyx, tuple(float(v) for v in origin_out))  # type: ignore[arg-type]


def _antialias(image: sitk.Image, grid: ModelGrid) -> sitk.Image:
    """Low-pass the series to the model grid's resolution, nearly independently of the input's.

    First whole-voxel block averaging (BinShrink, cheap, int16) down to about half the model
    spacing, then a Gaussian (sigma 0.4 x model spacing, in mm) on that much smaller image.
    A 0.7 mm and a 1.4 mm reconstruction of the same patient thus give nearly the same
    model input, which is what lets the model train on coarse phantoms.
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    amap = _axis_map(direction)
    target_xyz = [grid.spacing_zyx[2], grid.spacing_zyx[1], grid.spacing_zyx[0]]
    factors = [max(1, int(math.floor(target_xyz[amap[i]] / (2.0 * image.GetSpacing()[i]) + 1e-3)))
               for i in range(3)]
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
    sigmas = [0.4 * target_xyz[amap[i]] if target_xyz[amap[i]] > 1.5 * image.GetSpacing()[i] else 0.0
              for i in range(3)]
    image = sitk.Cast(image, sitk.sitkFloat32)
    if any(sg > 0 for sg in sigmas):
        g = sitk.SmoothingRecursiveGaussianImageFilter()
        g.SetSigma([max(sg, 1e-3) for sg in sigmas])
        image = g.Execute(image)
    return image


def preprocess(
    volume: Volume | sitk.Image,
    prep: Preprocessing,
    size_zyx: tuple[int, int, int],
) -> tuple[np.ndarray, ModelGrid]:
    """The model input, float32 [1, 1, z, y, x], and the grid it lies on.

    1. anti-aliasing (:func:`_antialias`): block averaging then a Gaussian, so noise and
       fine detail do not alias and the input resolution matters little;
    2. linear resampling onto the model grid (LPS axes, centred on the series), padding
       with ``pad_hu`` outside the series;
    3. HU window clip and normalisation (minmax to [0, 1], or z-score).
    """
    image = volume.to_sitk() if isinstance(volume, Volume) else volume
    grid = model_grid(image, prep, size_zyx)
    if prep.antialias:
        image = _antialias(image, grid)
    resampled = sitk.Resample(
        image, grid.reference(), sitk.Transform(), sitk.sitkLinear, float(prep.pad_hu), sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(resampled)  # z, y, x (z inferior -> superior)
    lo, hi = prep.hu_window
    out = np.clip(arr, lo, hi).astype(np.float32, copy=False)
    if prep.normalisation == "minmax":
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
    else:
        out -= np.float32(prep.mean)
        out *= np.float32(1.0 / prep.std)
    return out[None, None], grid


def map_to_series(prob: np.ndarray, grid: ModelGrid, volume: Volume, threshold: float = 0.5) -> np.ndarray:
    """A model-grid probability map [z, y, x] as a uint8 mask (0/1) on the series grid.

    Resamples a uint8-scaled copy (linear), so the full-size result never exists in float.
    """
    scaled = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 254.0), 0, 254).astype(np.uint8)
    src = sitk.GetImageFromArray(scaled)
    src.SetSpacing((grid.spacing_zyx[2], grid.spacing_zyx[1], grid.spacing_zyx[0]))
    src.SetOrigin(grid.origin_xyz)
    ref = sitk.Image([volume.shape[2], volume.shape[1], volume.shape[0]], sitk.sitkUInt8)
    ref.SetSpacing((volume.spacing_zyx[2], volume.spacing_zyx[1], volume.spacing_zyx[0]))
    ref.SetOrigin(volume.origin)
    ref.SetDirection(tuple(float(v) for v in volume.direction.reshape(-1)))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkUInt8)
    mask = sitk.GetArrayFromImage(out)
    return (mask >= np.uint8(round(threshold * 254))).astype(np.uint8)


def _slice_reference(volume: Volume, z: int) -> sitk.Image:
    """A one-slice image at series slice ``z`` (same in-plane grid and direction)."""
    normal = volume.direction[:, 2]
    origin = np.asarray(volume.origin, dtype=np.float64) + normal * (z * volume.spacing_zyx[0])
    ref = sitk.Image([volume.shape[2], volume.shape[1], 1], sitk.sitkUInt8)
    ref.SetSpacing((volume.spacing_zyx[2], volume.spacing_zyx[1], volume.spacing_zyx[0]))
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetDirection(tuple(float(v) for v in volume.direction.reshape(-1)))
    return ref


def lesion_scores_on_series(prob: np.ndarray, grid: ModelGrid, volume: Volume, threshold: float = 0.5) -> np.ndarray:
    """Lesion area (mm²) per series slice, read off the model grid (no resampling).

    Enough to choose the key slices of the secondary capture: the full-resolution map is
    then made for those slices alone (:func:`mask_slices_on_series`), not for all of them.
    """
    above = np.asarray(prob) >= threshold
    per_model_slice = above.reshape(above.shape[0], -1).sum(axis=1) * (grid.spacing_zyx[1] * grid.spacing_zyx[2])
    normal = volume.direction[:, 2]
    origin = np.asarray(volume.origin, dtype=np.float64)
    z_mm = np.array([(origin + normal * (k * volume.spacing_zyx[0]))[2] for k in range(volume.shape[0])])
    zi = np.rint((z_mm - grid.origin_xyz[2]) / grid.spacing_zyx[0]).astype(np.int64)
    inside = (zi >= 0) & (zi < above.shape[0])
    scores = np.zeros(volume.shape[0], dtype=np.float64)
    scores[inside] = per_model_slice[zi[inside]]
    return scores


def mask_slices_on_series(prob: np.ndarray, grid: ModelGrid, volume: Volume, slices: list[int],
                          threshold: float = 0.5) -> dict[int, np.ndarray]:
    """The lesion map as uint8 masks (0/1) on the given series slices only."""
    scaled = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 254.0), 0, 254).astype(np.uint8)
    src = sitk.GetImageFromArray(scaled)
    src.SetSpacing((grid.spacing_zyx[2], grid.spacing_zyx[1], grid.spacing_zyx[0]))
    src.SetOrigin(grid.origin_xyz)
    cut = np.uint8(round(threshold * 254))
    out = {}
    for z in slices:
        img = sitk.Resample(src, _slice_reference(volume, z), sitk.Transform(), sitk.sitkLinear, 0.0,
                            sitk.sitkUInt8)
        out[z] = (sitk.GetArrayFromImage(img)[0] >= cut).astype(np.uint8)
    return out
