"""Bronchovascular tree: pulmonary vessels and the airways that run with them, as 3-D capsules in mm.

The vessel tree branches from each hilum (18 lobar/segmental trunks per lung), each of two children
taking 0.68-0.78 of its parent's radius until ~0.4 mm, and stops near the pleura, so vessels thin
toward the periphery over 9-10 generations. That taper is steeper than Murray's law (a symmetric
split would keep 0.79, diameter exponent 3; ours is ~2.2): a Murray tree down to 0.4 mm would
have ten times the segments and cost seconds per volume, for vessels below what CT resolves. Bronchi follow the vessel branches side by side
(bronchus lumen ~0.65 x the artery radius, wall ~0.4 x the lumen radius, i.e. ~15 % of the outer
diameter) down to a ~2 mm lumen. Not modelled: separate arterial and venous trees (veins run
between lobules, not with the bronchi), lymphatics, bronchial wall cartilage rings.
"""
from __future__ import annotations

import numpy as np

from .anatomy import TISSUE
from .grid import Grid
from .lungmodel import CoarseLung

AW_LUMEN = 0.65    # bronchus lumen radius / artery radius (normal broncho-arterial ratio ~0.65-0.7)
AW_WALL = 0.43     # wall thickness / lumen radius (wall = 15 % of the outer diameter)
AW_MIN_LUMEN = 1.0  # mm radius: smaller bronchi are not resolved on clinical CT
CENTRAL_AIRWAY_GENERATIONS = 2  # trachea excluded: main bronchus = 1, lobar bronchi = 2 (class Airways)


def _perp(d: np.ndarray, rng) -> np.ndarray:
    v = rng.normal(size=3)
    v -= v.dot(d) * d
    return v / (np.linalg.norm(v) + 1e-9)


def grow_tree(cl: CoarseLung, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (vessels, airways) as (N, 8) float32 arrays: x0 y0 z0 x1 y1 z1 radius generation.

    Airway rows carry the lumen radius; generation counts from the hilum (vessel roots = 1,
    airways continuing the lobar bronchi = 3)."""
    rng = np.random.default_rng([seed, 23])
    p = cl.p
    segs: list[tuple] = []
    aws: list[tuple] = []
    for side in (-1, 1):
        lab = 1 if side < 0 else 2
        h = np.array(p.hilum(side))
        roots = [(0.1, -0.1, 1.0), (0.6, -0.3, 0.6), (1.0, 0.1, 0.1), (0.4, -0.8, -0.4),
                 (0.5, 0.7, -0.5), (0.3, 0.1, -1.0), (0.5, 0.9, 0.2), (0.4, -0.8, 0.3),
                 (0.8, 0.3, -0.6), (0.2, 0.4, 0.9), (0.7, -0.5, -0.8), (0.2, 0.8, -1.0),
                 (0.3, 0.5, -1.0), (0.5, -0.2, -1.0), (0.1, 0.9, -0.8), (0.7, 0.2, -1.0),  # basal trunks
                 (0.5, 0.5, 0.8), (0.4, -0.6, 0.8)]  # apical/posterior upper-lobe trunks
        stack: list[tuple] = []
        for r0 in roots:
            d = np.array([side * r0[0], r0[1], r0[2]], float)
            d /= np.linalg.norm(d)
            a0 = h + side * np.array([6.0, 0, 0])
            u = _perp(d, rng)
            r = rng.uniform(3.6, 4.6)
            stack.append((a0, d, r, 0, a0 + u * (r * (1 + AW_LUMEN * (1 + AW_WALL)) + 0.3), u))
        while stack:
            a, d, r, gen, aw_a, u = stack.pop()
            length = float(np.clip(r * rng.uniform(7.0, 11.0), 3.0, 36.0))
            if gen == 0:  # lobar/segmental trunks are long: they carry the tree to the bases and apices
                length = float(rng.uniform(45.0, 75.0) if d[2] < -0.6 else rng.uniform(25.0, 50.0))
            for _ in range(5):
                b = a + d * length
                lb, dp = cl.at(b)
                if gen == 0 or (lb == lab and dp >= min(1.5 * r, 4.0)):
                    break
                length *= 0.5
            else:
                continue
            segs.append((*a, *b, r, gen + 1))
            aw_b = None
            rl = AW_LUMEN * r
            if aw_a is not None and rl >= AW_MIN_LUMEN:
                # The bronchus runs beside its artery: same direction, offset perpendicular to it.
                u = u - u.dot(d) * d
                u /= np.linalg.norm(u) + 1e-9
                aw_b = b + u * (r + rl * (1 + AW_WALL) + 0.3)
                if cl.at(aw_b)[0] == lab or gen == 0:
                    aws.append((*aw_a, *aw_b, rl, gen + 1 + CENTRAL_AIRWAY_GENERATIONS))
                else:
                    aw_b = None
            rc = r * rng.uniform(0.68, 0.78)
            if rc < 0.38 or gen > 14:
                continue
            for sgn in (1, -1):
                ang = np.deg2rad(rng.uniform(20, 40))
                q = _perp(d, rng)
                nd = np.cos(ang) * d + sgn * np.sin(ang) * q
                nd /= np.linalg.norm(nd)
                # Both children inherit the bronchus end point: the airway branches where its artery does.
                stack.append((b, nd, rc * rng.uniform(0.95, 1.05), gen + 1, aw_b, u))
    return np.asarray(segs, np.float32).reshape(-1, 8), np.asarray(aws, np.float32).reshape(-1, 8)


def tree_stats(segs: np.ndarray, aws: np.ndarray) -> dict:
    """Generations and smallest calibres of the rendered tree (PhantomVolume.tree)."""
    return {
        "vessel_generations": int(segs[:, 7].max()) if len(segs) else 0,
        "airway_generations": int(aws[:, 7].max()) if len(aws) else CENTRAL_AIRWAY_GENERATIONS,
        "min_vessel_radius_mm": round(float(segs[:, 6].min()), 3) if len(segs) else 0.0,
        "min_airway_lumen_radius_mm": round(float(aws[:, 6].min()), 3) if len(aws) else 4.0,
        "vessel_segments": int(len(segs)), "airway_segments": int(len(aws)),
    }


def _seg_dist(z, y, x, s):
    """Distance (mm) from broadcast coordinate arrays to segment s."""
    ax, ay, az, bx, by, bz = (float(v) for v in s[:6])
    vx, vy, vz = bx - ax, by - ay, bz - az
    vv = vx * vx + vy * vy + vz * vz + 1e-9
    px, py, pz = x - ax, y - ay, z - az
    t = np.clip((px * vx + py * vy + pz * vz) / vv, 0.0, 1.0)
    dx, dy, dz = px - t * vx, py - t * vy, pz - t * vz
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def rasterize_segments(segs: np.ndarray, grid: Grid, out: np.ndarray, grow: float = 1.0, add: float = 0.0,
                       z_extent: float = 0.0, also: tuple = ()) -> None:
    """Max-composite partial-volume fraction (0..255) of each capsule into out (uint8, grid shape).

    The capsule radius is grow * radius + add (airway walls are drawn as a grown lumen); `also`
    holds more (out, grow, add) triples drawn from the same distances (wall and lumen in one
    pass). With z_extent (mm, the slice's own thickness) above the in-plane pixel, the fraction
    is averaged over up to 3 sub-planes across the slice, so a thin vessel between two slice
    centres shows faintly in both instead of vanishing (partial volume, not a point sample).
    Hot path: one vectorised distance evaluation per segment."""
    pv = float(np.mean(grid.spacing_zyx[1:]))
    n_sub = int(np.clip(np.ceil(z_extent / (1.5 * pv)), 1, 3)) if z_extent > 1.2 * pv else 1
    offs = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * z_extent if n_sub > 1 else np.zeros(1)
    zpad = float(np.abs(offs).max())
    targets = ((out, grow, add),) + tuple(also)
    gmax = max(t[1] for t in targets)
    amax = max(t[2] for t in targets)
    zs, ys, xs = grid.zs, grid.ys, grid.xs
    inv = 1.0 / pv
    for s in segs:
        m = float(s[6]) * gmax + amax + pv
        lo = np.minimum(s[0:3], s[3:6]) - m
        hi = np.maximum(s[0:3], s[3:6]) + m
        lo[2] -= zpad
        hi[2] += zpad
        sl = grid.bbox(lo, hi)
        if sl is None:
            continue
        zsel = zs[sl[0]]
        nzb = len(zsel)
        z = (zsel[:, None] + offs[None, :].astype(np.float32)).reshape(-1)[:, None, None] if n_sub > 1 else zsel[:, None, None]
        y = ys[sl[1]][None, :, None]
        x = xs[sl[2]][None, None, :]
        d = _seg_dist(z, y, x, s)
        for o_arr, g, a in targets:
            r = float(s[6]) * g + a
            f = np.clip((r - d) * inv + 0.5, 0.0, 1.0)
            if n_sub > 1:
                f = f.reshape(nzb, n_sub, *f.shape[1:]).mean(axis=1)
            if r < pv:  # sub-voxel vessels: keep their integral roughly right
                f *= 0.5 + 0.5 * r / pv
            v = (f * 255.0).astype(np.uint8)
            o_ = o_arr[sl]
            np.maximum(o_, v, out=o_)


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

    def paint(self, hw: np.ndarray, zs, ys, xs, tw: np.ndarray | None = None) -> None:
        """Paint walls then lumens into the HU window hw (slab x window), and their tissue codes into tw."""
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
            if tw is not None:
                t = tw[sl]
                t[d < r + 2.0] = TISSUE["airway_wall"]
                t[d < r] = TISSUE["airway_lumen"]
