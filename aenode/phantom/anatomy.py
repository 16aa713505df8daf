"""Chest anatomy defined analytically in patient (LPS) millimetres, rasterised slab by slab.

Why analytic: the inference engineer needs the same synthetic patient at 512x512x300 and at
128x128x64, fast. Everything here is a closed-form function of (x, y, z) in mm; z-invariant
parts (body wall, spine, table) are computed once as 2-D maps per grid, and only the
z-dependent parts (ribs, heart, lungs, domes) are evaluated per slab.

Convention: LPS, +x = patient left, +y = posterior, +z = superior; the patient lies supine,
so the table is at large +y and "dependent" means posterior.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import overload

import numpy as np

# Nominal attenuation (HU) of the tissues.
HU = {
    "air": -1000.0, "lung": -850.0, "fat": -95.0, "skin": 35.0, "muscle": 50.0, "blood": 42.0,
    "liver": 58.0, "spleen": 47.0, "soft": 32.0, "csf": 12.0, "disc": 85.0, "cartilage": 130.0,
    "marrow": 260.0, "cortex": 780.0, "scapula": 620.0, "table_shell": 180.0, "table_core": -880.0,
    "effusion": 14.0, "atelectasis": -60.0,
}


@dataclass(frozen=True)
class PatientParams:
    """Seed-dependent patient habitus and position (all mm)."""

    a: float            # body half-width (x)
    b: float            # body half-depth (y)
    fat: float          # subcutaneous fat thickness
    muscle: float       # chest-wall muscle thickness (lateral)
    cx: float           # lateral shift of the body centre
    table_y: float      # y of the table top (body rests on it)
    z_apex: float       # lung apex
    lung_h: float       # apex to top of right dome
    heart_scale: float
    rib_pitch: float
    rib_phase: float

    @property
    def cy(self) -> float:
        return self.table_y - self.b - 1.0

    @property
    def skin(self) -> float:
        return 2.0

    @property
    def rib_w(self) -> float:
        return 9.0

    @overload
    def wall(self, s: float) -> float: ...
    @overload
    def wall(self, s: np.ndarray) -> np.ndarray: ...

    def wall(self, s: np.ndarray | float) -> np.ndarray | float:
        """Body-surface-to-pleura thickness as a function of sin(theta) (posterior thicker)."""
        post = np.maximum(s, 0.0) ** 6  # paraspinal muscles: thick only near the midline
        return self.skin + self.fat + self.muscle + 22.0 * post + self.rib_w + 1.0

    @property
    def w_ant(self) -> float:
        return float(self.wall(-1.0))

    @property
    def w_post(self) -> float:
        return float(self.wall(1.0))

    @property
    def w_lat(self) -> float:
        return float(self.wall(0.0))

    @property
    def cav_a(self) -> float:
        return self.a - self.w_lat

    @property
    def ycc(self) -> float:
        """Centre (y) of the thoracic cavity."""
        return self.cy + (self.w_ant - self.w_post) / 2.0

    @property
    def cb(self) -> float:
        return self.b - (self.w_ant + self.w_post) / 2.0

    @property
    def y_vb(self) -> float:
        return self.cy + self.b - self.w_post - 6.0

    @property
    def z_dome_r(self) -> float:
        return self.z_apex - self.lung_h

    @property
    def z_dome_l(self) -> float:
        return self.z_dome_r - 14.0

    @property
    def z_carina(self) -> float:
        return self.z_apex - 0.30 * self.lung_h

    @property
    def z_arch(self) -> float:
        return self.z_carina + 24.0

    @property
    def heart_c(self) -> tuple[float, float, float]:
        return (self.cx + 20.0, self.ycc - 0.25 * self.cb, self.z_dome_r + 40.0)

    @property
    def heart_r(self) -> tuple[float, float, float]:
        h = self.heart_scale
        return (0.42 * self.cav_a * h, 0.52 * self.cb * h, 58.0 * h)

    @property
    def z_lowest_lung(self) -> float:
        return self.z_dome_l - 62.0

    @property
    def z_center(self) -> float:
        """Middle of the lungs in z: scans are centred here."""
        return 0.5 * (self.z_apex + self.z_lowest_lung)

    def hilum(self, side: int) -> tuple[float, float, float]:
        """Hilum (x, y, z) of the right (side=-1) or left (side=+1) lung."""
        return (self.cx + side * 34.0, self.ycc + 0.05 * self.cb, self.z_carina - 18.0)

    def asdict(self) -> dict:
        d = asdict(self)
        d.update(cy=self.cy, cav_a=self.cav_a, cb=self.cb, z_dome_r=self.z_dome_r,
                 z_dome_l=self.z_dome_l, z_carina=self.z_carina)
        return {k: round(float(v), 3) for k, v in d.items()}


def sample_patient(seed: int) -> PatientParams:
    """Draw a plausible adult habitus and table position from the seed."""
    rng = np.random.default_rng([seed, 11])
    a = rng.uniform(138.0, 182.0)
    lung_h = rng.uniform(165.0, 205.0)
    return PatientParams(
        a=a, b=a * rng.uniform(0.62, 0.74), fat=rng.uniform(4.0, 20.0), muscle=rng.uniform(8.0, 14.0),
        cx=rng.uniform(-22.0, 22.0), table_y=rng.uniform(75.0, 130.0), z_apex=-35.0 - rng.uniform(0, 25),
        lung_h=lung_h, heart_scale=rng.uniform(0.9, 1.1), rib_pitch=rng.uniform(22.0, 27.0),
        rib_phase=rng.uniform(0.0, 1.0),
    )


def fov_for(p: PatientParams) -> float:
    """Reconstruction field of view (mm) that holds the body and the table, as a tech would set."""
    need = max(abs(p.cx) + p.a + 12.0, p.b * 2 - p.table_y + 12.0, p.table_y + 28.0)
    return float(np.clip(np.ceil(2 * need / 10.0) * 10.0, 330.0, 500.0))


@dataclass
class Pleural:
    """Pleural-space findings rendered as anatomy (fluid displaces lung)."""

    effusion_sides: tuple[int, ...] = ()
    effusion_depth: float = 0.0      # mm of fluid at the base, measured along y
    effusion_top: float = 0.0        # z where the meniscus ends
    atelectasis_sides: tuple[int, ...] = ()
    atelectasis_depth: float = 0.0
    atelectasis_top: float = 0.0


def _capsule_dist2(px, py, a, b):
    """Squared 2-D distance from points to segment a-b (vectorised)."""
    ax, ay = a
    bx, by = b
    vx, vy = bx - ax, by - ay
    t = np.clip(((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    dx = px - (ax + t * vx)
    dy = py - (ay + t * vy)
    return dx * dx + dy * dy


class AnatomyMaps:
    """Per-grid 2-D maps (z-invariant anatomy) plus the z-dependent slab renderer."""

    def __init__(self, p: PatientParams, ys: np.ndarray, xs: np.ndarray, pleural: Pleural | None = None):
        self.p = p
        self.pleural = pleural or Pleural()
        self.ys, self.xs = ys, xs
        self.dy = float(ys[1] - ys[0]) if len(ys) > 1 else 1.0
        Y = np.repeat(ys[:, None].astype(np.float32), len(xs), axis=1)
        X = np.repeat(xs[None, :].astype(np.float32), len(ys), axis=0)
        dxc = X - np.float32(p.cx)
        dyc = Y - np.float32(p.cy)
        r = np.sqrt(dxc * dxc + dyc * dyc) + np.float32(1e-3)
        s, c = dyc / r, dxc / r
        R = p.a * p.b / np.sqrt((p.b * c) ** 2 + (p.a * s) ** 2)
        d_b = (R - r).astype(np.float32)  # depth below the body surface along the ray
        W = p.wall(s).astype(np.float32)
        self.d_b, self.W = d_b, W
        body = d_b > 0
        base = np.full(d_b.shape, HU["air"], np.float32)
        # Table: carbon-fibre shell around a foam core, curved, under the patient.
        ty = p.table_y
        curve = ty - 0.0003 * (X - p.cx) ** 2  # cradle curves up at the sides
        tw = np.abs(X - p.cx) < 230
        shell = tw & (Y >= curve + 1) & (Y < curve + 4)
        core = tw & (Y >= curve + 4) & (Y < curve + 40)
        bshell = tw & (Y >= curve + 40) & (Y < curve + 44)
        base[core] = HU["table_core"]
        base[shell | bshell] = HU["table_shell"]
        base[body] = HU["skin"]
        base[d_b > p.skin] = HU["fat"]
        base[d_b > p.skin + p.fat] = HU["muscle"]
        cavity = d_b > W
        self.cavity = cavity
        base[cavity] = HU["fat"]  # mediastinal fat, overwritten below
        # Rib ring (bone drawn per slice), scapulae (upper chest), sternum.
        ring = (d_b > W - p.rib_w - 1) & (d_b <= W - 1)
        self.ring_idx = np.flatnonzero(ring)
        t = ((d_b - (W - p.rib_w - 1)) / p.rib_w).ravel()[self.ring_idx]
        self.ring_hu = np.where((t < 0.25) | (t > 0.75), HU["cortex"], HU["marrow"]).astype(np.float32)
        sr = s.ravel()[self.ring_idx]
        self.ring_hu[sr < -0.8] = HU["cartilage"]
        self.ring_off = (45.0 * (1.0 - sr) / 2.0).astype(np.float32)
        self.scap = (d_b > W - p.rib_w - 11) & (d_b < W - p.rib_w - 6) & (s > 0.25) & (np.abs(c) > 0.35) & (np.abs(c) < 0.9)
        yant = p.cy - p.b + p.w_ant
        self.sternum = (((X - p.cx) / 15.0) ** 2 + ((Y - (yant - 4.0)) / 6.5) ** 2) < 1
        self.sternum_core = (((X - p.cx) / 12.0) ** 2 + ((Y - (yant - 4.0)) / 4.0) ** 2) < 1
        # Spine: vertebral body (cancellous + cortex), canal, posterior elements.
        yvb = p.y_vb
        qvb = ((X - p.cx) / 19.0) ** 2 + ((Y - yvb) / 16.0) ** 2
        self.vb = qvb < 1
        base[qvb < 1.25] = HU["cortex"]
        base[self.vb] = HU["marrow"]
        qcan = ((X - p.cx) ** 2 + (Y - (yvb + 26.0)) ** 2)
        post_el = (qcan < 16.0 ** 2) & (Y > yvb + 17.0)
        spinous = (np.abs(X - p.cx) < 4.0) & (Y > yvb + 26) & (Y < yvb + 52)
        base[post_el | spinous] = HU["cortex"]
        base[qcan < 9.5 ** 2] = HU["csf"]
        # Descending aorta and oesophagus in the posterior mediastinum.
        self.aorta_d = (p.cx + 25.0, yvb - 10.0)
        qao = (X - self.aorta_d[0]) ** 2 + (Y - self.aorta_d[1]) ** 2
        base[qao < 12.0 ** 2] = HU["blood"]
        qes = (X - (p.cx + 4.0)) ** 2 + (Y - (yvb - 25.0)) ** 2
        base[qes < 7.0 ** 2] = HU["soft"]
        excl = (qvb < 1.9) | (qao < 16.0 ** 2) | (qes < 10.0 ** 2)
        self.med_free = cavity & ~excl
        self.lung_ok = self.med_free
        self.base = base
        # Trachea (above the carina).
        self.y_tr = yvb - 42.0
        qtr = (X - p.cx) ** 2 + (Y - self.y_tr) ** 2
        self.trachea_air = qtr < 8.5 ** 2
        self.trachea_wall = (qtr < 11.0 ** 2) & ~self.trachea_air
        # Heart (ellipsoid) 2-D part, great vessels.
        hx, hy, _ = p.heart_c
        hrx, hry, _ = p.heart_r
        self.q_heart = (((X - hx) / hrx) ** 2 + ((Y - hy) / hry) ** 2).astype(np.float32)
        self.asc = (p.cx - 12.0, p.ycc - 0.30 * p.cb)
        self.q_asc = ((X - self.asc[0]) ** 2 + (Y - self.asc[1]) ** 2).astype(np.float32)
        self.q_arch = _capsule_dist2(X, Y, self.asc, self.aorta_d).astype(np.float32)
        self.q_pt = ((X - (p.cx + 14.0)) ** 2 + (Y - (p.ycc - 0.36 * p.cb)) ** 2).astype(np.float32)
        # Lungs: side, apex taper, dome surfaces.
        self.sx = (X - p.cx).astype(np.float32)
        self.apex_q = {}
        self.dome = {}
        kd = 48.0 / (0.55 * p.cav_a) ** 2
        yd = p.ycc - 0.1 * p.cb
        for side, zd in ((-1, p.z_dome_r), (1, p.z_dome_l)):
            xa = p.cx + side * 0.5 * p.cav_a
            ya = p.ycc + 0.15 * p.cb
            self.apex_q[side] = (((X - xa) / (0.66 * p.cav_a)) ** 2 + ((Y - ya) / (1.1 * p.cb)) ** 2).astype(np.float32)
            xd = p.cx + side * 0.42 * p.cav_a
            post = np.clip((Y - yd) / p.cb, 0, 1)
            self.dome[side] = (zd - kd * ((X - xd) ** 2 + (0.8 * (Y - yd)) ** 2) - 30.0 * post ** 2).astype(np.float32)
        self.dome_ab = np.where(X < p.cx, self.dome[-1], self.dome[1]).astype(np.float32)
        # Abdomen under the domes: liver right, spleen left-posterior, stomach left-anterior.
        ab = np.full(d_b.shape, HU["soft"], np.float32)
        ab[X < p.cx + 30.0] = HU["liver"]
        ab[((X - (p.cx + 0.7 * p.cav_a)) / (0.3 * p.cav_a)) ** 2 + ((Y - (p.ycc + 0.45 * p.cb)) / (0.4 * p.cb)) ** 2 < 1] = HU["spleen"]
        ab[((X - (p.cx + 0.35 * p.cav_a)) / (0.35 * p.cav_a)) ** 2 + ((Y - (p.ycc - 0.35 * p.cb)) / (0.4 * p.cb)) ** 2 < 1] = 18.0
        self.abd = ab
        # Parenchymal attenuation with a mild dependent (gravity) gradient.
        grad = np.clip((Y - (p.ycc - p.cb)) / (2 * p.cb), 0, 1)
        self.paren = (HU["lung"] - 22.0 + 44.0 * grad).astype(np.float32)
        # Window (bounding box) of the cavity, where z-dependent work happens.
        rows = np.flatnonzero(cavity.any(axis=1))
        cols = np.flatnonzero(cavity.any(axis=0))
        if len(rows):
            self.win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        else:
            self.win = (slice(0, 0), slice(0, 0))

    # -- lungs ----------------------------------------------------------------------
    def lung_labels(self, zs: np.ndarray) -> np.ndarray:
        """Lung region labels (1 right, 2 left) in the cavity window for slices zs, before pleural fluid."""
        p = self.p
        wy, wx = self.win
        Z = zs[:, None, None].astype(np.float32)
        ok = self.lung_ok[wy, wx]
        sx = self.sx[wy, wx]
        m = 12.0 + 14.0 * np.clip((zs - p.z_carina) / 60.0, 0, 1)
        zk = p.z_apex - 85.0
        g = 1.0 - np.clip((zs - zk) / (p.z_apex - zk), 0, None) ** 2
        out = np.zeros((len(zs),) + ok.shape, np.uint8)
        hx, hy, hz = p.heart_c
        hrz = p.heart_r[2]
        qz = ((zs - hz) / hrz) ** 2
        for side, lab in ((-1, 1), (1, 2)):
            L = ok[None] & ((side * sx)[None] > m[:, None, None])
            L &= self.apex_q[side][wy, wx][None] <= g[:, None, None]
            L &= Z > self.dome[side][wy, wx][None]
            out[L] = lab
        # Heart and great vessels push the lungs aside (with a rim of fat).
        qh = self.q_heart[wy, wx][None] + qz[:, None, None]
        out[qh < 1.35] = 0
        asc_on = (zs < p.z_arch) & (zs > hz + 0.4 * hrz)
        out[asc_on[:, None, None] & (self.q_asc[wy, wx] < 19.0 ** 2)[None]] = 0
        arch_on = np.abs(zs - p.z_arch) < 14.0
        out[arch_on[:, None, None] & (self.q_arch[wy, wx] < 16.0 ** 2)[None]] = 0
        pt_on = (zs < p.z_carina - 6.0) & (zs > hz + 0.45 * hrz)
        out[pt_on[:, None, None] & (self.q_pt[wy, wx] < 18.0 ** 2)[None]] = 0
        return out

    def pleural_bands(self, lungs: np.ndarray, zs: np.ndarray, sides, depth: float, top: float) -> np.ndarray:
        """Dependent (posterior) band of the given lungs: voxels within t(z) mm of the posterior
        lung border, t growing from 0 at z=top to `depth` at the lung base (a meniscus)."""
        band = np.zeros(lungs.shape, bool)
        if not sides or depth <= 0:
            return band
        p = self.p
        ycut = int(np.searchsorted(self.ys[self.win[0]], p.ycc - 0.2 * p.cb))
        for k, z in enumerate(zs):
            if z >= top:
                continue
            frac = np.clip((top - z) / max(top - p.z_lowest_lung, 1.0), 0, 1) ** 0.6
            sh = int(round(depth * frac / self.dy))
            if sh < 1:
                continue
            for side in sides:
                R = lungs[k] == (1 if side < 0 else 2)
                Rs = np.zeros_like(R)
                Rs[:-sh] = R[sh:]
                b = R & ~Rs
                b[:ycut] = False
                band[k] |= b
        return band

    # -- full slab ------------------------------------------------------------------
    def render_slab(self, zs: np.ndarray, vessel_u8: np.ndarray | None, les_w: np.ndarray | None,
                    les_hu: np.ndarray | None, les_lab: np.ndarray | None, airways) -> tuple:
        """HU (float32), lung labels and lesion labels for a slab of slices zs.

        vessel_u8/les_* are the matching slabs of the pre-rasterised vessel fraction and
        lesion canvas (see vessels.py, lesions.py)."""
        p = self.p
        n = len(zs)
        hu = np.empty((n,) + self.base.shape, np.float32)
        hu[:] = self.base
        lung = np.zeros(hu.shape, np.uint8)
        lab = np.zeros(hu.shape, np.uint8)
        wy, wx = self.win
        hw = hu[:, wy, wx]  # view
        flat = hu.reshape(n, -1)
        for k, z in enumerate(zs):
            ph = ((z + self.ring_off) / p.rib_pitch + p.rib_phase) % 1.0
            on = ph < 0.38
            flat[k, self.ring_idx[on]] = self.ring_hu[on]
            if p.z_apex + 15 > z > p.z_apex - 140:
                hu[k][self.scap] = HU["scapula"]
            if p.z_apex - 5 > z > p.z_dome_r + 10:
                hu[k][self.sternum] = HU["cortex"]
                hu[k][self.sternum_core] = HU["marrow"]
            if ((z / 27.0 + p.rib_phase) % 1.0) < 0.22:
                hu[k][self.vb] = HU["disc"]
        # Heart and great vessels.
        hx, hy, hz = p.heart_c
        hrz = p.heart_r[2]
        Z = zs[:, None, None]
        mf = self.med_free[wy, wx][None]
        qh = self.q_heart[wy, wx][None] + (((zs - hz) / hrz) ** 2)[:, None, None]
        hw[(qh < 1.15) & mf] = HU["fat"]
        hw[(qh < 1.0) & mf] = HU["blood"]
        asc_on = ((zs < p.z_arch) & (zs > hz + 0.4 * hrz))[:, None, None]
        hw[asc_on & (self.q_asc[wy, wx] < 15.0 ** 2)[None]] = HU["blood"]
        arch_on = (np.abs(zs - p.z_arch) < 11.0)[:, None, None]
        hw[arch_on & (self.q_arch[wy, wx] < 12.5 ** 2)[None]] = HU["blood"]
        pt_on = ((zs < p.z_carina - 6.0) & (zs > hz + 0.45 * hrz))[:, None, None]
        hw[pt_on & (self.q_pt[wy, wx] < 14.0 ** 2)[None]] = HU["blood"]
        # Abdomen below the diaphragm (muscle band just under the dome).
        dab = self.dome_ab[wy, wx][None]
        below = (Z <= dab) & mf
        if below.any():
            hw[below] = np.broadcast_to(self.abd[wy, wx], below.shape)[below]
            hw[below & (Z > dab - 5.0)] = HU["muscle"]
        # Trachea last among mediastinal structures (the arch passes beside it).
        for k, z in enumerate(zs):
            if z > p.z_carina:
                hu[k][self.trachea_wall] = HU["soft"]
                hu[k][self.trachea_air] = HU["air"]
        # Lungs.
        L = self.lung_labels(zs)
        pl = self.pleural
        eff = self.pleural_bands(L, zs, pl.effusion_sides, pl.effusion_depth, pl.effusion_top)
        atel = self.pleural_bands(L, zs, pl.atelectasis_sides, pl.atelectasis_depth, pl.atelectasis_top) & ~eff
        L[eff] = 0
        inl = L > 0
        P = np.broadcast_to(self.paren[wy, wx], L.shape).copy()
        labw = np.zeros(L.shape, np.uint8)
        if les_w is not None:
            assert les_hu is not None and les_lab is not None, "lesion slabs come together"
            lw = les_w[:, wy, wx]
            has = (lw > 0) & inl
            if has.any():
                w = lw[has].astype(np.float32) * np.float32(1 / 255.0)
                P[has] += w * (les_hu[:, wy, wx][has].astype(np.float32) - P[has])
                strong = (lw >= 128) & inl
                labw[strong] = les_lab[:, wy, wx][strong]
        P[atel] = HU["atelectasis"]
        labw[atel] = 7
        if vessel_u8 is not None:
            f = vessel_u8[:, wy, wx].astype(np.float32) * np.float32(1 / 255.0)
            P += f * (HU["blood"] - P)
        hw[inl] = P[inl]
        hw[eff] = HU["effusion"]
        if airways is not None:  # bronchi stay air-filled even inside the lung
            airways.paint(hw, zs, self.ys[wy], self.xs[wx])
        labw[eff] = 6
        lung[:, wy, wx] = L
        lab[:, wy, wx] = labw
        return hu, lung, lab
