"""Minimal JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1) encoder.

pydicom ships no encoder for 1.2.840.10008.1.2.4.70 and the installed plugins only decode it,
so this writes the bitstream itself: predictor 1 (left neighbour; first column uses the pixel
above), one component, a per-frame optimal Huffman table, vectorised bit packing in numpy.
"""
from __future__ import annotations

import heapq
import struct

import numpy as np


def _huffman_lengths(freq: np.ndarray) -> np.ndarray:
    """Code length per symbol (0 = unused). A dummy symbol keeps the all-ones code unused."""
    syms = [(int(f), i) for i, f in enumerate(freq) if f > 0]
    syms.append((0, len(freq)))  # dummy, gets the longest code
    if len(syms) == 1:
        syms.append((0, len(freq) + 1))
    heap = [(f, n, [s]) for n, (f, s) in enumerate(syms)]
    heapq.heapify(heap)
    depth: dict[int, int] = {s: 0 for _, s in syms}
    n = len(heap)
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        n += 1
        heapq.heappush(heap, (f1 + f2, n, a + b))
    out = np.zeros(len(freq), np.int64)
    for s, d in depth.items():
        if s < len(freq):
            out[s] = d
    if out.max() > 16:
        raise ValueError("Huffman code too long")  # cannot happen for <= 17 categories
    return out


def _canonical(lengths: np.ndarray):
    """JPEG canonical codes: BITS counts, HUFFVAL order, and code per symbol."""
    order = sorted((int(l), s) for s, l in enumerate(lengths) if l > 0)
    bits = [0] * 16
    codes = np.zeros(len(lengths), np.int64)
    code, prev = 0, order[0][0] if order else 0
    for l, s in order:
        code <<= (l - prev)
        prev = l
        codes[s] = code
        code += 1
        bits[l - 1] += 1
    return bits, [s for _, s in order], codes


def encode_frame(arr: np.ndarray, precision: int) -> bytes:
    """Encode one 2-D unsigned frame (values < 2**precision) losslessly."""
    a = np.ascontiguousarray(arr).astype(np.int32)
    rows, cols = a.shape
    pred = np.empty_like(a)
    pred[:, 1:] = a[:, :-1]
    pred[1:, 0] = a[:-1, 0]
    pred[0, 0] = 1 << (precision - 1)
    diff = (a - pred).ravel()
    mag = np.abs(diff)
    ssss = np.zeros(mag.shape, np.int64)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    # guard against float rounding at powers of two
    ssss[nz] += (mag[nz] >= (1 << ssss[nz])).astype(np.int64)
    ssss[nz] -= (mag[nz] < (1 << (ssss[nz] - 1))).astype(np.int64)
    extra = np.where(diff >= 0, diff, diff + (1 << ssss) - 1).astype(np.int64)
    lengths = _huffman_lengths(np.bincount(ssss, minlength=17)[:17])
    bits, huffval, codes = _canonical(lengths)
    clen = lengths[ssss]
    word = (codes[ssss] << ssss) | (extra & ((1 << ssss) - 1))
    tot = clen + ssss  # <= 32
    # Left-align each word in 64 bits, unpack, keep the first `tot` bits of each row.
    aligned = (word << (64 - tot)).astype(">u8")
    bitmat = np.unpackbits(aligned.view(np.uint8).reshape(-1, 8), axis=1)[:, :32]
    keep = np.arange(32)[None, :] < tot[:, None]
    stream = bitmat[keep]
    pad = (-len(stream)) % 8
    if pad:
        stream = np.concatenate([stream, np.ones(pad, np.uint8)])
    data = np.packbits(stream)
    ff = np.flatnonzero(data == 0xFF)
    if len(ff):
        data = np.insert(data, ff + 1, 0)
    out = bytearray(b"\xff\xd8")
    out += b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, rows, cols, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + bytes(bits) + bytes(huffval)
    out += b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
    out += b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, 1, 0, 0])
    out += data.tobytes()
    out += b"\xff\xd9"
    return bytes(out)
