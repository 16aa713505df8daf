"""Rendering helpers for the secondary capture: lung window, lesion overlay, banner text.

Text uses Pillow's built-in font (no font files are read or downloaded).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LUNG_WINDOW = (1500.0, -600.0)  # width, level (HU)
OVERLAY_RGB = (255, 140, 0)  # orange
OVERLAY_ALPHA = 0.45
BANNER_BG = (0, 0, 0)
BANNER_FG = (255, 255, 0)
WARNING_FG = (255, 80, 80)


def window_to_uint8(hu: np.ndarray, width: float = LUNG_WINDOW[0], level: float = LUNG_WINDOW[1]) -> np.ndarray:
    low = level - width / 2.0
    scaled = (hu.astype(np.float32) - low) * (255.0 / width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def overlay(gray: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """RGB (y, x, 3) uint8 of a windowed slice, lesion pixels tinted semi-transparently."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if mask is not None:
        m = mask.astype(bool)
        if m.any():
            colour = np.asarray(OVERLAY_RGB, dtype=np.float32)
            rgb[m] = rgb[m] * (1.0 - OVERLAY_ALPHA) + colour * OVERLAY_ALPHA
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1, built-in font
    except TypeError:  # older Pillow: bitmap font only
        return ImageFont.load_default()


def render_banner(lines: list[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    """An RGB strip (h, width, 3) with one text line per entry, sized to the width."""
    size = max(12, min(28, width // 40))
    font = _font(size)
    line_h = int(size * 1.35)
    height = line_h * len(lines) + size // 2
    img = Image.new("RGB", (width, height), BANNER_BG)
    draw = ImageDraw.Draw(img)
    y = size // 4
    for text, colour in lines:
        draw.text((size // 2, y), text, fill=colour, font=font)
        y += line_h
    return np.asarray(img, dtype=np.uint8)


def mosaic(tiles: list[np.ndarray], columns: int = 2) -> np.ndarray:
    """Tiles (each h, w, 3, same shape) in a grid, row-major; empty cells black."""
    if not tiles:
        raise ValueError("mosaic: no tiles")
    h, w, _ = tiles[0].shape
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    out = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return out
