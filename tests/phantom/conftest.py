import numpy as np
import pytest
from scipy import ndimage

from aenode.phantom import generate_volume

SHAPE = (96, 192, 192)  # 3.1 mm slices, ~2 mm pixels: fast, still resolves the patterns


@pytest.fixture(scope="session")
def vol_cache():
    cache = {}

    def get(pattern, seed, variant=None, noise=True, shape=SHAPE):
        key = (pattern, seed, variant, noise, shape)
        if key not in cache:
            cache[key] = generate_volume(pattern, seed, shape_zyx=shape, variant=variant, noise=noise)
        return cache[key]
    return get


def norm_depth(v) -> np.ndarray:
    """Per slice and per lung: distance to the lung border / the largest such distance (0 at the
    pleura, 1 at the lung's core). NaN outside the lungs."""
    out = np.full(v.lung_mask.shape, np.nan, np.float32)
    sp = v.spacing_zyx[1:]
    for k in range(v.lung_mask.shape[0]):
        for lab in (1, 2):
            m = v.lung_mask[k] == lab
            if m.sum() < 20:
                continue
            d = ndimage.distance_transform_edt(m, sampling=sp)
            out[k][m] = d[m] / d.max()
    return out


def lesion(v, labels=(1, 2, 3, 4, 5, 8)):
    return np.isin(v.lesion_mask, labels)
