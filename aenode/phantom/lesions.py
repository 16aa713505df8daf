"""Pneumonia patterns: which lesions go where, and their rasterisation.

Label set of ``PhantomVolume.lesion_mask`` (uint8):

====  =====================================================================
0     none
1     ground-glass opacity (GGO)
2     crazy-paving (GGO with superimposed fine reticular/septal lines)
3     consolidation
4     nodule / tree-in-bud (centrilobular nodules and small branching opacities)
5     cavitary lesion (thick wall and its air lumen)
6     pleural effusion (in the pleural space: *outside* the lung mask)
7     atelectasis (dependent, subpleural; incidental)
8     smooth interlobular septal thickening (no GGO)
====  =====================================================================

Lesions are planned in mm on the coarse lung model (so a seed means the same lesions at any
grid) and drawn into a "lesion canvas": weight (0..255), target HU and label. The slab renderer
blends the target HU into the parenchyma *before* the vessels and airways are added, so GGO keeps
vessels visible (and consolidation shows air bronchograms), and modulates GGO with the coarse
texture field so it is patchy with irregular margins. "Lower lobes" and "lobar" mean the lobes
cut by the fissures (anatomy.lobe_of).

Confounders (emphysema, linear scars, dependent atelectasis, breathing motion) are drawn from
the seed alone, with the same odds for every pattern, so that a classifier cannot take them as a
sign of one category; they are not lesions (label 0), except atelectasis (7, as before).
Not modelled: bronchiectasis, honeycombing, mosaic attenuation, calcified granulomas, pleural
plaques, devices and lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .anatomy import LOWER_LOBES, Pleural, lobe_of
from .grid import Grid
from .lungmodel import STEP, CoarseLung
from .vessels import _seg_dist

PATTERNS = ("typical", "indeterminate", "atypical", "negative")
CATEGORY = {
    "typical": "Typical appearance",
    "indeterminate": "Indeterminate appearance",
    "atypical": "Atypical appearance",
    "negative": "Negative for pneumonia",
}
VARIANTS = {
    "typical": ("peripheral-multifocal",),
    "indeterminate": ("unilateral", "perihilar", "diffuse"),
    "atypical": ("lobar-consolidation", "tree-in-bud", "cavitation", "septal-effusion"),
    "negative": ("normal", "atelectasis"),
}
LABELS = {0: "none", 1: "ggo", 2: "crazy-paving", 3: "consolidation", 4: "nodule/tree-in-bud",
          5: "cavity", 6: "effusion", 7: "atelectasis", 8: "septal-thickening"}


@dataclass
class Plan:
    pattern: str
    variant: str
    prims: list = field(default_factory=list)
    pleural: Pleural = field(default_factory=Pleural)
    features: list = field(default_factory=list)
    confounders: list = field(default_factory=list)
    motion_mm: float = 0.0  # breathing-motion doubling at the lung bases (0: none)


def _pick(rng, pts: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    if w is not None:
        w = w / w.sum()
    return pts[rng.choice(len(pts), p=w)]


def _zfrac(cl: CoarseLung, z):
    """0 at the lung base, 1 at the apex."""
    return (np.asarray(z) - cl.z_bottom) / max(cl.z_top - cl.z_bottom, 1.0)


def plan_lesions(cl: CoarseLung, pattern: str, seed: int, variant: str | None = None) -> Plan:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    rng = np.random.default_rng([seed, 37, PATTERNS.index(pattern)])
    vs = VARIANTS[pattern]
    chosen = vs[int(seed) % len(vs)]  # round-robin over seeds: balanced training sets
    if variant is not None:
        if variant not in vs:
            raise ValueError(f"unknown variant {variant!r} for {pattern}; expected one of {', '.join(vs)}")
        chosen = variant
    plan = Plan(pattern, chosen)
    p = cl.p
    pts = {1: cl.points(1), 2: cl.points(2)}
    if chosen == "peripheral-multifocal":
        n = int(rng.integers(6, 10))
        sides = [1, 2] * 2 + list(rng.integers(1, 3, n - 4))
        placed: list[tuple[np.ndarray, float]] = []
        n_pave = 0
        n_cons = 0
        n_halo = 0
        want_cons = rng.random() < 0.6
        want_halo = rng.random() < 0.3
        for i, lab in enumerate(sides):
            P = pts[lab]
            c = P[(P[:, 3] >= 2.0) & (P[:, 3] <= 8.0)]
            zf = _zfrac(cl, c[:, 2])
            # lower-lobe predominant, but above the dome's thin crescent of lung
            w = np.where(np.isin(c[:, 4], LOWER_LOBES) & (zf > 0.15), 1.0, np.where(zf < 0.5, 0.2, 0.03))
            for _ in range(40):
                q = _pick(rng, c, w)
                r = rng.uniform(9.0, 16.0)
                if all(np.linalg.norm(q[:3] - o) > r + ro + 6.0 for o, ro in placed):
                    break
            else:
                continue
            placed.append((q[:3], r))
            pave = (i == 1) or rng.random() < 0.3
            n_pave += pave
            core = 0.0
            if want_cons and n_cons < 2 and not pave and i >= 2:
                core, n_cons = rng.uniform(0.35, 0.55), n_cons + 1
            radii = r * rng.uniform(0.85, 1.15, 3)
            if not pave and not core and i >= 2 and n_halo == 0 and want_halo:
                n_halo = 1  # reverse halo: central GGO ringed by consolidation (organising pneumonia)
                plan.prims.append(("rhalo", q[:3], r, rng.uniform(2.5, 4.0), rng.uniform(-660, -560)))
                continue
            plan.prims.append(("blob", q[:3], radii, rng.uniform(-640, -500), 2 if pave else 1, 2.5,
                               rng.uniform(8.0, 12.0) if pave else 0.0, core))
        plan.features = ["ggo", "bilateral", "peripheral", "lower-lobe-predominant"]
        plan.features += ["reverse-halo"] * n_halo
        plan.features += ["crazy-paving"] * (n_pave > 0) + ["consolidation"] * (n_cons > 0)
    elif chosen == "unilateral":
        lab = int(rng.integers(1, 3))
        P = pts[lab]
        c = P[P[:, 3] >= 10.0]
        for _ in range(int(rng.integers(3, 6))):
            q = _pick(rng, c)[:3]
            lvl = rng.uniform(-680, -560)
            for _ in range(int(rng.integers(3, 6))):
                o = q + rng.uniform(-14, 14, 3)
                if cl.label_at(o)[0] != lab:
                    continue
                plan.prims.append(("blob", o, rng.uniform([4, 4, 8], [10, 10, 20]), lvl, 1, 3.0, 0.0, 0.0))
        plan.features = ["ggo", "unilateral", "non-rounded"]
    elif chosen == "perihilar":
        for side, lab in ((-1, 1), (1, 2)):
            h = np.array(p.hilum(side))
            P = pts[lab]
            c = P[(P[:, 3] >= 12.0) & (np.linalg.norm(P[:, :3] - h, axis=1) < 55.0)]
            for _ in range(int(rng.integers(3, 5))):
                q = _pick(rng, c)[:3]
                plan.prims.append(("blob", q, rng.uniform([10, 12, 16], [16, 20, 28]), rng.uniform(-650, -560), 1, 4.0, 0.0, 0.0))
        plan.features = ["ggo", "perihilar", "central"]
    elif chosen == "diffuse":
        g = np.random.default_rng([seed, 41]).standard_normal(cl.labels.shape).astype(np.float32)
        g = ndimage.gaussian_filter(g, 2.2)
        inl = cl.labels > 0
        thr = float(np.quantile(g[inl], rng.uniform(0.45, 0.6)))
        plan.prims.append(("field", g, thr, 0.18 * float(g[inl].std()), rng.uniform(-680, -600), 1))
        plan.features = ["ggo", "diffuse", "bilateral", "non-rounded"]
    elif chosen == "lobar-consolidation":
        side = int(rng.choice([-1, 1]))
        h = np.array(p.hilum(side))
        u = rng.random()
        lobe = "lower" if u < 0.6 else ("middle" if u < 0.7 and side < 0 else "upper")
        code = {(-1, "upper"): 1, (-1, "middle"): 2, (-1, "lower"): 3, (1, "upper"): 4, (1, "lower"): 5}[(side, lobe)]
        cone = None
        if rng.random() < 0.4:  # segmental: a wedge of the lobe
            d = np.array([side * 0.5, 0.8 if lobe == "lower" else -0.5, -0.4 if lobe == "lower" else 0.6])
            cone = (d / np.linalg.norm(d), np.cos(np.deg2rad(35)))
        plan.prims.append(("lobe", side, h, code, rng.uniform(18, 40), 3, cone))
        plan.features = ["consolidation", f"{lobe}-lobe", "segmental" if cone else "lobar", "air-bronchograms"]
    elif chosen == "tree-in-bud":
        for _ in range(int(rng.integers(2, 5))):
            lab = int(rng.integers(1, 3))
            P = pts[lab]
            c = _pick(rng, P[(P[:, 3] >= 15.0) & (P[:, 3] <= 40)])[:3]
            for _ in range(int(rng.integers(15, 30))):
                q = c + rng.uniform(-20, 20, 3)
                if cl.label_at(q)[0] != lab or cl.depth_at(q)[0] < 5.0:
                    continue
                rr = rng.uniform(1.6, 3.0)
                plan.prims.append(("blob", q, np.full(3, rr), rng.uniform(10, 40), 4, 0.6, 0.0, 0.0))
                if rng.random() < 0.5:
                    d = rng.normal(size=3)
                    d /= np.linalg.norm(d)
                    e = q + d * rng.uniform(4, 8)
                    plan.prims.append(("capsule", np.r_[q, e, 0.9], 20.0, 4))
                    for sgn in (-1, 1):
                        f = e + (d + sgn * np.cross(d, [0, 0, 1.0])) * rng.uniform(2, 4)
                        plan.prims.append(("capsule", np.r_[e, f, 0.7], 20.0, 4))
        plan.features = ["centrilobular-nodules", "tree-in-bud"]
    elif chosen == "cavitation":
        for _ in range(int(rng.integers(1, 3))):
            lab = int(rng.integers(1, 3))
            P = pts[lab]
            ro = rng.uniform(12, 20)
            c = _pick(rng, P[P[:, 3] >= ro * 0.8])[:3]
            plan.prims.append(("cavity", c, ro, rng.uniform(3.5, 7.0), 5))
        plan.features = ["cavitation", "thick-walled"]
    elif chosen == "septal-effusion":
        eff_sides = (-1, 1) if rng.random() < 0.6 else (-1,)
        plan.pleural = Pleural(effusion_sides=eff_sides, effusion_depth=rng.uniform(20, 45),
                               effusion_top=p.z_dome_r + rng.uniform(25, 60))
        plan.prims.append(("septal", rng.uniform(10, 14), 0.7, rng.uniform(-300, -200), 8,
                           cl.z_bottom + 0.6 * (cl.z_top - cl.z_bottom)))
        plan.features = ["smooth-septal-thickening", "pleural-effusion", "bilateral-effusion" if len(eff_sides) == 2 else "right-effusion"]
    elif chosen == "atelectasis":
        atel_sides = (-1, 1) if rng.random() < 0.5 else (int(rng.choice([-1, 1])),)
        plan.pleural = Pleural(atelectasis_sides=atel_sides, atelectasis_depth=rng.uniform(4.0, 7.0),
                               atelectasis_top=p.z_dome_r + rng.uniform(5, 25))
        plan.features = ["dependent-atelectasis"]
    else:  # normal
        plan.features = []
    add_confounders(plan, cl, seed)
    return plan


def add_confounders(plan: Plan, cl: CoarseLung, seed: int) -> None:
    """Incidental findings of real chest CTs, drawn from the seed only (same odds for every pattern)."""
    rng = np.random.default_rng([seed, 43])
    p = cl.p
    pts = cl.points()
    zf = _zfrac(cl, pts[:, 2])
    extra: list = []
    if rng.random() < 0.3:  # emphysema: low-attenuation areas below -950 HU, upper-lobe predominant
        if rng.random() < 0.65:
            c = pts[(zf > 0.45) & (pts[:, 3] > 8.0)]
            for _ in range(int(rng.integers(40, 160))):
                extra.append(("blob", _pick(rng, c)[:3], np.full(3, rng.uniform(1.5, 4.5)), rng.uniform(-1000, -975),
                              0, 0.6, 0.0, 0.0))
            plan.confounders.append("centrilobular-emphysema")
        else:
            c = pts[(zf > 0.35) & (pts[:, 3] < 6.0)]
            for _ in range(int(rng.integers(15, 50))):
                extra.append(("blob", _pick(rng, c)[:3], np.full(3, rng.uniform(3.0, 7.0)), rng.uniform(-1000, -980),
                              0, 0.6, 0.0, 0.0))
            plan.confounders.append("paraseptal-emphysema")
    if rng.random() < 0.3:  # linear scars / subsegmental band atelectasis
        c = pts[(pts[:, 3] > 3.0) & (pts[:, 3] < 25.0)]
        for _ in range(int(rng.integers(1, 4))):
            a = _pick(rng, c)[:3]
            d = rng.normal(size=3) * np.array([1.0, 1.0, 0.4])
            d /= np.linalg.norm(d)
            b = a + d * rng.uniform(15.0, 40.0)
            extra.append(("capsule", np.r_[a, b, rng.uniform(0.6, 1.2)], rng.uniform(-80.0, 30.0), 0))
        plan.confounders.append("linear-scar")
    pl = plan.pleural
    if not pl.atelectasis_sides and not pl.effusion_sides and rng.random() < 0.25:
        sides = (-1, 1) if rng.random() < 0.5 else (int(rng.choice([-1, 1])),)
        plan.pleural = Pleural(atelectasis_sides=sides, atelectasis_depth=rng.uniform(2.5, 6.0),
                               atelectasis_top=p.z_dome_r + rng.uniform(5, 25))
        plan.confounders.append("dependent-atelectasis")
    elif pl.atelectasis_sides:
        plan.confounders.append("dependent-atelectasis")
    if rng.random() < 0.15:
        plan.motion_mm = float(rng.uniform(1.5, 4.0))
        plan.confounders.append("breathing-motion")
    plan.prims[:0] = extra  # before the lesions: a lesion drawn later wins where they overlap


class Canvas:
    """Lesion canvas on the output grid: weight 0..255, target HU, label."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.w = np.zeros(grid.shape_zyx, np.uint8)
        self.hu = np.zeros(grid.shape_zyx, np.int16)
        self.lab = np.zeros(grid.shape_zyx, np.uint8)
        self.pv = float(np.mean(grid.spacing_zyx[1:]))

    def put(self, sl, w: np.ndarray, hu, lab) -> None:
        wu = (np.clip(w, 0, 1) * 255.0).astype(np.uint8)
        ow = self.w[sl]
        upd = wu > ow
        if not upd.any():
            return
        ow[upd] = wu[upd]
        oh = self.hu[sl]
        oh[upd] = (np.broadcast_to(hu, upd.shape)[upd]).astype(np.int16)
        ol = self.lab[sl]
        ol[upd] = np.broadcast_to(lab, upd.shape)[upd]

    def coords(self, sl):
        g = self.grid
        return g.zs[sl[0]][:, None, None], g.ys[sl[1]][None, :, None], g.xs[sl[2]][None, None, :]


def _lattice_dist(z, y, x, period: float, off: float) -> np.ndarray:
    """Distance (mm) to the nearest plane of a cubic lattice: a polygonal septal network."""
    def d1(v):
        t = (v + off) / period
        return np.abs(t - np.rint(t)) * period
    return np.minimum(np.minimum(d1(x), d1(y)), d1(z))


def _coarse_gather(cl: CoarseLung, arr: np.ndarray, z, y, x) -> np.ndarray:
    k = np.clip(np.rint((cl.zs[0] - z.ravel()) / STEP).astype(int), 0, len(cl.zs) - 1)
    j = np.clip(np.rint((y.ravel() - cl.ys[0]) / STEP).astype(int), 0, len(cl.ys) - 1)
    i = np.clip(np.rint((x.ravel() - cl.xs[0]) / STEP).astype(int), 0, len(cl.xs) - 1)
    return arr[np.ix_(k, j, i)]


def _lin_axis(src_coords: np.ndarray, dst: np.ndarray):
    """Indices and weights for linear interpolation from a uniform source axis."""
    step = src_coords[1] - src_coords[0]
    t = np.clip((dst - src_coords[0]) / step, 0, len(src_coords) - 1.0001)
    i0 = np.floor(t).astype(int)
    return i0, (t - i0).astype(np.float32)


def _coarse_trilinear(cl: CoarseLung, arr: np.ndarray, z, y, x) -> np.ndarray:
    """Separable linear upsampling of a coarse field onto an output box (cheap gathers)."""
    out = arr
    for axis, src, dst in ((0, cl.zs, z.ravel()), (1, cl.ys, y.ravel()), (2, cl.xs, x.ravel())):
        i0, f = _lin_axis(src, dst)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i0 + 1, axis=axis)
        shp = [1, 1, 1]
        shp[axis] = -1
        f = f.reshape(shp)
        out = a + (b - a) * f
    return out.astype(np.float32)


def _ball(grid: Grid, cv: Canvas, c: np.ndarray, ro: float, pv: float):
    """(slices, distance from ``c`` in mm, partial-volume weight of the sphere of radius
    ``ro``) over the sphere's bounding box, or None when it misses the grid."""
    m = ro + pv
    sl = grid.bbox(c - m, c + m)
    if sl is None:
        return None
    z, y, x = cv.coords(sl)
    d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
    return sl, d, np.clip((ro - d) / pv + 0.5, 0, 1)


def rasterize(plan: Plan, cl: CoarseLung, grid: Grid) -> Canvas:
    cv = Canvas(grid)
    pv = cv.pv
    p = cl.p
    lung_lo = (p.cx - p.a, p.cy - p.b, cl.z_bottom - 5)
    lung_hi = (p.cx + p.a, p.cy + p.b, cl.z_top + 5)
    for pr in plan.prims:
        kind = pr[0]
        if kind == "blob":
            _, c, radii, level, lab, edge, pave, core = pr
            m = radii + edge + pv
            sl = grid.bbox(c - m, c + m)
            if sl is None:
                continue
            z, y, x = cv.coords(sl)
            rho = np.sqrt(((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2)
            rmin = float(np.min(radii))
            w = np.clip((1.0 - rho) * rmin / max(edge, pv) + 0.5, 0, 1)
            hu = np.full(w.shape, level, np.float32)
            labs = np.full(w.shape, lab, np.uint8)
            if pave:
                d = _lattice_dist(z, y, x, pave, float(c[0] * 0.37))
                hu += 260.0 * np.clip((0.6 - d) / pv + 0.5, 0, 1)
            if core:
                inner = rho < core
                hu[inner] = 30.0
                labs[inner] = 3
                w = np.where(inner, 1.0, w)
            cv.put(sl, w, hu, labs)
        elif kind == "capsule":
            _, s, level, lab = pr
            r = float(s[6])
            m = r + pv
            sl = grid.bbox(np.minimum(s[:3], s[3:6]) - m, np.maximum(s[:3], s[3:6]) + m)
            if sl is None:
                continue
            z, y, x = cv.coords(sl)
            d = _seg_dist(z, y, x, s)
            cv.put(sl, np.clip((r - d) / pv + 0.5, 0, 1), level, lab)
        elif kind == "rhalo":
            _, c, ro, wall, level = pr
            ball = _ball(grid, cv, c, ro, pv)
            if ball is None:
                continue
            sl, d, w = ball
            ring = d >= ro - wall
            cv.put(sl, w, np.where(ring, 10.0, level).astype(np.float32), np.where(ring, 3, 1).astype(np.uint8))
        elif kind == "cavity":
            _, c, ro, wall, lab = pr
            ball = _ball(grid, cv, c, ro, pv)
            if ball is None:
                continue
            sl, d, w = ball
            hu = np.where(d < ro - wall, -1000.0, 28.0).astype(np.float32)
            w = np.where(d < ro - wall, 1.0, w)
            cv.put(sl, w, hu, lab)
        elif kind == "lobe":
            _, side, h, code, level, lab, cone = pr
            lo = (p.cx if side > 0 else p.cx - p.a, lung_lo[1], lung_lo[2])
            hi = (p.cx + p.a if side > 0 else p.cx, lung_hi[1], lung_hi[2])
            sl = grid.bbox(lo, hi)
            if sl is None:
                continue
            z, y, x = cv.coords(sl)
            lungs = np.full((1, 1, 1), 1 if side < 0 else 2, np.uint8)
            w = (lobe_of(p, lungs, x, y, z) == code).astype(np.float32)
            if cone is not None:
                d, cosa = cone
                vx, vy, vz = x - h[0], y - h[1], z - h[2]
                nv = np.sqrt(vx * vx + vy * vy + vz * vz) + 1e-3
                w = w * ((vx * d[0] + vy * d[1] + vz * d[2]) / nv > cosa)
            cv.put(sl, w, level, lab)
        elif kind == "field":
            _, g, thr, soft, level, lab = pr
            sl = grid.bbox(lung_lo, lung_hi)
            if sl is None:
                continue
            z, y, x = cv.coords(sl)
            f = _coarse_trilinear(cl, g, z, y, x)
            w = np.clip((f - thr) / soft + 0.5, 0, 1)
            cv.put(sl, w, level + 60.0 * (w - 1.0), lab)
        elif kind == "septal":
            _, period, half, level, lab, ztop = pr
            lo = (lung_lo[0], lung_lo[1], lung_lo[2])
            hi = (lung_hi[0], lung_hi[1], ztop)
            sl = grid.bbox(lo, hi)
            if sl is None:
                continue
            z, y, x = cv.coords(sl)
            dep = _coarse_gather(cl, cl.depth, z, y, x)
            d = _lattice_dist(z, y, x, period, 3.1)
            w = np.clip((half - d) / pv + 0.5, 0, 1) * (dep < 22.0)
            cv.put(sl, w, level, lab)
    return cv
