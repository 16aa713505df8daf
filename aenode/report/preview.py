"""A PNG preview of a stored secondary capture, for the dashboard and the demo.

The SC is RGB already (lung window, overlay and banner burned in), so this only takes the
first frame's pixels and encodes them; anything else is scaled to 8 bits to stay viewable.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread


def sc_png_bytes(path: str | Path) -> bytes:
    ds = dcmread(path)
    arr = np.asarray(ds.pixel_array)
    if arr.ndim == 4 or (arr.ndim == 3 and str(ds.PhotometricInterpretation) != "RGB"):
        arr = arr[0]
    if arr.ndim == 2:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / max(hi - lo, 1e-6) * 255
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
