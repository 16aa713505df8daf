"""Training data: generated phantom volumes passed through the node's own preprocessing.

Each sample is what the model sees in service (``aenode.infer.preprocess.preprocess``
applied to a CT volume) plus half-resolution soft segmentation targets derived from the
phantom's ground-truth masks.  Samples are cached as .npz under ``training/cache/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aenode.infer.manifest import load_manifest  # noqa: E402
from aenode.infer.preprocess import ModelGrid, preprocess  # noqa: E402

PATTERNS = ("typical", "indeterminate", "atypical", "negative")
CACHE = Path(__file__).resolve().parent / "cache"
PACKAGE = ROOT / "models" / "covid-typicality"
# Segmentation channels (training targets; only lung and lesion are exported).
CHANNELS = ("lung", "lesion", "ggo", "crazy_paving", "consolidation", "nodule", "cavity",
            "effusion", "atelectasis", "septal")
LESION_LABELS = (1, 2, 3, 4, 5)  # pneumonia lesions inside the lung (not effusion/atelectasis/septal)
# Generation grids (z, y, x): different resolutions so the model does not learn one scanner.
GEN_SHAPES = ((120, 256, 256), (150, 320, 320), (100, 384, 384), (120, 256, 256))
# Extra samples of the variants the 2.0.0 model confused most (atypical tree-in-bud and
# cavitation against normal lungs; MODEL_CARD.md "Failure modes"): one of each per extra
# seed, two atypical and two negative so that the class balance is kept.
HARD_VARIANTS = (("atypical", "tree-in-bud"), ("atypical", "cavitation"), ("negative", "normal"),
                 ("negative", "atelectasis"))


def take_option(argv: list[str], name: str, count: int) -> list[int] | None:
    """Remove ``name`` and its ``count`` integer values from ``argv`` (the scripts' small
    hand-read command lines); None when ``name`` is absent."""
    if name not in argv:
        return None
    at = argv.index(name)
    values = [int(v) for v in argv[at + 1:at + 1 + count]]
    if len(values) != count:
        raise SystemExit(f"{name} needs {count} numbers")
    del argv[at:at + 1 + count]
    return values


def prep_and_shape():
    m = load_manifest(PACKAGE)
    return m.preprocessing, m.input.size_zyx


def phantom_to_sitk(arr: np.ndarray, spacing_zyx, origin) -> sitk.Image:
    """A phantom array (slice 0 most superior) as an image with LPS geometry."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0])))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    return img


def half_grid(grid: ModelGrid) -> ModelGrid:
    """The grid of 2x2x2 blocks of the model grid (segmentation loss resolution)."""
    sz = tuple(s // 2 for s in grid.size_zyx)
    sp = tuple(s * 2 for s in grid.spacing_zyx)
    origin = tuple(o + s / 2.0 for o, s in zip(grid.origin_xyz, (grid.spacing_zyx[2], grid.spacing_zyx[1], grid.spacing_zyx[0])))
    return ModelGrid(sz, sp, origin)  # type: ignore[arg-type]


def _targets(pattern: str, seed: int, grid: ModelGrid, generate_volume, variant: str | None = None) -> np.ndarray:
    """Soft targets at half model resolution: the phantom's masks rasterised on the model
    grid itself (same patient, same centre, noise off), then 2x2x2 block fractions."""
    m = generate_volume(pattern, seed, shape_zyx=grid.size_zyx, spacing_zyx=grid.spacing_zyx,
                        noise=False, threads=1, variant=variant)
    lab, lung = m.lesion_mask[::-1], m.lung_mask[::-1]  # phantom slice 0 is superior; model z ascends
    lesion = np.isin(lab, LESION_LABELS)
    chans = {
        "lung": (lung > 0) | lesion, "lesion": lesion, "ggo": (lab == 1) | (lab == 2), "crazy_paving": lab == 2,
        "consolidation": lab == 3, "nodule": lab == 4, "cavity": lab == 5, "effusion": lab == 6,
        "atelectasis": lab == 7, "septal": lab == 8,
    }
    d, h, w = (s // 2 for s in grid.size_zyx)
    out = np.zeros((len(CHANNELS), d, h, w), np.uint8)
    for i, name in enumerate(CHANNELS):
        c = chans[name].astype(np.float32).reshape(d, 2, h, 2, w, 2).mean(axis=(1, 3, 5))
        out[i] = np.rint(c * 255).astype(np.uint8)
    return out


def make_sample(pattern: str, seed: int, shape_zyx=None, variant: str | None = None) -> dict:
    """One training sample: a phantom under a randomised acquisition (slice thickness
    0.6-5 mm, kernel, dose, contrast, field of view: ``sample_acquisition``), through the
    node's own preprocessing, with its segmentation targets."""
    from aenode.phantom import generate_volume
    from aenode.phantom.acquisition import sample_acquisition
    from aenode.phantom.anatomy import fov_for, sample_patient

    rng = np.random.default_rng([seed, 7])
    shape = shape_zyx or GEN_SHAPES[int(rng.integers(len(GEN_SHAPES)))]
    acq = sample_acquisition(seed)
    thick = float(acq.slice_thickness_mm or 1.25)
    # z spacing: contiguous slices of the drawn thickness, but never finer than 1.25 mm here
    # (the model sees 5 mm after antialiasing: thinner slices only cost generation time).
    dz = max(thick, 1.25)
    cover = float(rng.choice([300.0, 320.0, 340.0]))
    nz = int(round(cover / dz))
    fov = fov_for(sample_patient(seed)) * acq.fov_scale
    spacing = (dz, fov / shape[1], fov / shape[2])
    pv = generate_volume(pattern, seed, shape_zyx=(nz, shape[1], shape[2]), spacing_zyx=spacing,
                         acquisition=acq, threads=1, variant=variant)
    prep, size = prep_and_shape()
    img = phantom_to_sitk(pv.hu, pv.spacing_zyx, pv.origin)
    del pv.hu
    x, grid = preprocess(img, prep, size)
    seg = _targets(pattern, seed, grid, generate_volume, variant)
    return {"x": x[0, 0].astype(np.float16), "seg": seg, "label": PATTERNS.index(pattern),
            "variant": pv.pattern_variant, "seed": seed, "thickness": thick}


def cache_path(pattern: str, seed: int, variant: str | None = None) -> Path:
    """``typical_12.npz``; a forced variant: ``atypical.cavitation_20001.npz``."""
    return CACHE / (f"{pattern}.{variant}_{seed}.npz" if variant else f"{pattern}_{seed}.npz")


def cache_paths(lo: int, hi: int, hard: tuple[int, int] | None = None) -> list[Path]:
    """The cached samples of seeds lo..hi-1 (every pattern), plus the forced hard variants
    of the seeds in ``hard``; missing files are skipped."""
    paths = [cache_path(p, s) for s in range(lo, hi) for p in PATTERNS]
    if hard:
        paths += [cache_path(p, s, v) for s in range(*hard) for p, v in HARD_VARIANTS]
    return [p for p in paths if p.exists()]


def _cache_one(args) -> str:
    pattern, seed, variant = args
    path = cache_path(pattern, seed, variant)
    if not path.exists():
        s = make_sample(pattern, seed, variant=variant)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=s["x"], seg=s["seg"], label=s["label"], variant=s["variant"], seed=s["seed"],
                 thickness=s["thickness"])
        os.replace(tmp, path)
    return str(path)


def build_cache(seeds: range, processes: int = 2, hard: range | None = None) -> list[Path]:
    from multiprocessing import Pool

    CACHE.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, int, str | None]] = [(p, s, None) for s in seeds for p in PATTERNS]
    jobs += [(p, s, v) for s in (hard or ()) for p, v in HARD_VARIANTS]
    with Pool(processes) as pool:
        paths = [Path(p) for p in pool.imap_unordered(_cache_one, jobs, chunksize=4)]
    return sorted(paths)


def load_arrays(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, segs, ys = [], [], []
    for p in paths:
        d = np.load(p)
        xs.append(d["x"])
        segs.append(d["seg"])
        ys.append(int(d["label"]))
    return np.stack(xs), np.stack(segs), np.array(ys)
