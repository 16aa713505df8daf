"""Render docs/patterns.png: one axial lung-window slice of each pattern, labelled.

Usage: python scripts/render_patterns.py [--out docs/patterns.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aenode.phantom import PATTERNS, generate_volume

SEEDS = {"typical": 3, "indeterminate": 4, "atypical": 8, "negative": 11}  # perihilar, cavitation, atelectasis


def lung_window(hu: np.ndarray, center: float = -600, width: float = 1500) -> np.ndarray:
    return (np.clip((hu - (center - width / 2)) / width, 0, 1) * 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/patterns.png")
    a = ap.parse_args()
    tiles = []
    for pat in PATTERNS:
        v = generate_volume(pat, SEEDS[pat], shape_zyx=(120, 384, 384))
        per = (v.lesion_mask > 0).sum(axis=(1, 2))
        k = int(np.argmax(per)) if per.max() > 0 else int(np.argmax((v.lung_mask > 0).sum(axis=(1, 2))))
        img = Image.fromarray(lung_window(v.hu[k])).convert("RGB")
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, 383, 22], fill=(0, 0, 0))
        d.text((6, 5), f"{v.category} - {v.pattern_variant} (seed {v.seed})", fill=(255, 255, 0))
        tiles.append(np.asarray(img))
    grid = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(a.out, optimize=True)
    print(f"wrote {a.out} ({Path(a.out).stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
