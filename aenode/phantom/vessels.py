"""Pulmonary vessel tree and airways, generated as 3-D capsules (segments with a radius) in mm.

The tree branches from each hilum, halves in calibre every few generations and stops
near the pleura, so vessels thin toward the periphery as on real CT.
"""
from __future__ import annotations

import numpy as np

from .grid import Grid
from .lungmodel import CoarseLung


def _perp(d: np.ndarray, rng) -> np.ndarray:
    v = rng.normal(size=3)
    v -= v.dot(d) * d
    return v / (np.linalg.norm(v) + 1e-9)


def grow_tree(cl: CoarseLung, seed: int) -> np.ndarray:
    """Return segments as an (N, 7) float32 array: x0 y0 z0 x1 y1 z1 radius."""
    rng = np.random.default_rng([seed, 23])
    p = cl.p
    segs: list[tuple] = []
    for side in (-1, 1):
        lab = 1 if side < 0 else 2
        h = np.array(p.hilum(side))
        roots = [(0.1, -0.1, 1.0), (0.6, -0.3, 0.6), (1.0, 0.1, 0.1), (0.4, -0.8, -0.4),
                 (0.5, 0.7, -0.5), (0.3, 0.1, -1.0), (0.5, 0.9, 0.2), (0.4, -0.8, 0.3),
                 (0.8, 0.3, -0.6), (0.2, 0.4, 0.9), (0.7, -0.5, -0.8), (0.2, 0.8, -1.0)]
        stack = []
        for r0 in roots:
            d = np.array([side * r0[0], r0[1], r0[2]], float)
            d /= np.linalg.norm(d)
            stack.append((h + side * np.array([6.0, 0, 0]), d, rng.uniform(3.6, 4.6), 0))
        while stack:
            a, d, r, gen = stack.pop()
            length = float(np.clip(r * rng.uniform(5.0, 8.0), 3.0, 28.0))
            for _ in range(3):
                b = a + d * length
                lb, dp = cl.at(b)
                if gen == 0 or (lb == lab and dp >= min(1.5 * r, 4.0)):
                    break
                length *= 0.5
            else:
                continue
            segs.append((*a, *b, r))
            rc = r * rng.uniform(0.68, 0.78)
            if rc < 0.38 or gen > 14:
                continue
            for sgn in (1, -1):
                ang = np.deg2rad(rng.uniform(20, 40))
                q = _perp(d, rng)
                nd = np.cos(ang) * d + sgn * np.sin(ang) * q
                nd /= np.linalg.norm(nd)
                stack.append((b, nd, rc * rng.uniform(0.95, 1.05), gen + 1))
    return np.asarray(segs, np.float32).reshape(-1, 7)


def _seg_dist(z, y, x, s):
    """Distance (mm) from broadcast coordinate arrays to segment s."""
    ax, ay, az, bx, by, bz = (float(v) for v in s[:6])
    vx, vy, vz = bx - ax, by - ay, bz - az
    vv = vx * vx + vy * vy + vz * vz + 1e-9
    px, py, pz = x - ax, y - ay, z - az
    t = np.clip((px * vx + py * vy + pz * vz) / vv, 0.0, 1.0)
    dx, dy, dz = px - t * vx, py - t * vy, pz - t * vz
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def rasterize_segments(segs: np.ndarray, grid: Grid, out: np.ndarray) -> None:
    """Max-composite partial-volume fraction (0..255) of each capsule into out (uint8, grid shape)."""
    pv = float(np.mean(grid.spacing_zyx[1:]))
    zs, ys, xs = grid.zs, grid.ys, grid.xs
    for s in segs:
        r = float(s[6])
        m = r + pv
        lo = np.minimum(s[0:3], s[3:6]) - m
        hi = np.maximum(s[0:3], s[3:6]) + m
        sl = grid.bbox(lo, hi)
        if sl is None:
            continue
        z = zs[sl[0]][:, None, None]
        y = ys[sl[1]][None, :, None]
        x = xs[sl[2]][None, None, :]
        d = _seg_dist(z, y, x, s)
        f = np.clip((r - d) / pv + 0.5, 0.0, 1.0)
        if r < pv:  # sub-voxel vessels: keep their integral roughly right
            f *= 0.5 + 0.5 * r / pv
        v = (f * 255.0).astype(np.uint8)
        o = out[sl]
        np.maximum(o, v, out=o)


class Airways:
    """Main and lobar bronchi as air-filled capsules with a soft-tissue wall."""

    def __init__(self, cl: CoarseLung):
        p = cl.p
        car = np.array([p.cx, p.y_vb - 42.0, p.z_carina])
        segs = []
        for side, drop, r in ((-1, 16.0, 7.5), (1, 26.0, 6.5)):
            h = np.array(p.hilum(side))
            end = np.array([h[0] - side * 6.0, h[1], car[2] - drop])
            segs.append((*car, *end, r))
            for d, rr in (((side * 12, 0, 18), 4.5), ((side * 10, 8, -22), 5.0), ((side * 8, -10, -16), 4.0)):
                segs.append((*end, *(end + np.array(d, float)), rr))
        self.segs = np.asarray(segs, np.float32)

    def paint(self, hw: np.ndarray, zs, ys, xs) -> None:
        """Paint walls then lumens into the HU window hw (slab x window)."""
        for s in self.segs:
            r = float(s[6])
            lo = np.minimum(s[0:3], s[3:6]) - r - 2.5
            hi = np.maximum(s[0:3], s[3:6]) + r + 2.5
            kz = np.nonzero((zs >= lo[2]) & (zs <= hi[2]))[0]
            jy = np.nonzero((ys >= lo[1]) & (ys <= hi[1]))[0]
            ix = np.nonzero((xs >= lo[0]) & (xs <= hi[0]))[0]
            if not (len(kz) and len(jy) and len(ix)):
                continue
            sl = (slice(kz[0], kz[-1] + 1), slice(jy[0], jy[-1] + 1), slice(ix[0], ix[-1] + 1))
            d = _seg_dist(zs[sl[0]][:, None, None], ys[sl[1]][None, :, None], xs[sl[2]][None, None, :], s)
            o = hw[sl]
            o[d < r + 2.0] = 40.0
            o[d < r] = -1000.0
