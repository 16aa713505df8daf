"""Chest anatomy defined analytically in patient (LPS) millimetres, rasterised slab by slab.

What it models: body habitus (size, subcutaneous fat, arms up or down), chest wall, ribs, spine,
sternum, scapulae, heart and great vessels (unenhanced or contrast-enhanced blood), liver/spleen
under the domes, the table; lungs with five lobes split by oblique and horizontal fissures (thin
dense sheets with partial volume), inflated parenchyma around -860 HU with a mm-scale correlated
texture and a dependent (posterior) gradient. What it does not: real organ shapes (everything
is ellipsoids, planes and capsules), mediastinal lymph nodes, breasts, the clavicles, cardiac
chambers and valves, beam hardening and streak artefacts.

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
    "marrow": 220.0, "cortex": 1050.0, "scapula": 850.0, "table_shell": 180.0, "table_core": -880.0,
    "effusion": 14.0, "atelectasis": -60.0, "airway_wall": 20.0, "fissure": -450.0,
}
# Tissue classes of PhantomVolume.tissue (noiseless ground truth of what each voxel mostly is).
# Codes are a contract with the realism measurements: add codes, never renumber.
TISSUE = {"outside": 0, "lung": 1, "fat": 2, "muscle": 3, "blood": 4, "cortical_bone": 5, "trabecular_bone": 6,
          "airway_lumen": 7, "lung_vessel": 8, "airway_wall": 9, "soft_other": 10, "table": 11, "lesion": 12,
          "effusion": 13, "fissure": 14}
T = TISSUE
# Lobe codes of PhantomVolume.lobe_mask.
LOBES = {0: "none", 1: "RUL", 2: "RML", 3: "RLL", 4: "LUL", 5: "LLL"}
LOWER_LOBES = (3, 5)


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
    arms_down: bool = False
    fissure_dz: float = 0.0     # seed jitter of the oblique fissures (mm)
    hfissure_dz: float = 0.0    # and of the horizontal fissure
    hu_fat: float = HU["fat"]   # per-patient tissue attenuation (fat -110..-80, muscle 36..50 HU: docs/PHANTOM_REALISM.md)
    hu_muscle: float = HU["muscle"]

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

    def fissures(self, side: int) -> tuple[float, float, float, float]:
        """Oblique fissure of one lung as z_f = z0 + slope * (y - y0) + FISSURE_KX * (|x - cx| - 60)
        (upper lobe above it, i.e. anterior-superior; on axial slices it runs from posteromedial to
        anterolateral), and the right horizontal fissure height z_h (RUL above, RML below):
        returns (y0, z0, slope, z_h). The oblique fissure runs from about the carina level at the
        back down to the anterior third of the dome, the horizontal one at about the hilum."""
        y_post, y_ant = self.ycc + self.cb, self.ycc - 0.55 * self.cb
        z_post = self.z_carina + 8.0 + self.fissure_dz - (8.0 if side > 0 else 0.0)
        z_ant = (self.z_dome_r if side < 0 else self.z_dome_l) + 10.0
        slope = (z_post - z_ant) / (y_post - y_ant)
        z_h = self.z_carina - 22.0 + self.hfissure_dz
        return y_post, z_post, slope, z_h

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
        a=a, b=a * rng.uniform(0.62, 0.74), fat=4.0 + 36.0 * rng.beta(1.6, 3.0), muscle=rng.uniform(8.0, 14.0),
        cx=rng.uniform(-22.0, 22.0), table_y=rng.uniform(75.0, 130.0), z_apex=-35.0 - rng.uniform(0, 25),
        lung_h=lung_h, heart_scale=rng.uniform(0.9, 1.1), rib_pitch=rng.uniform(22.0, 27.0),
        rib_phase=rng.uniform(0.0, 1.0), arms_down=bool(rng.random() < 0.2),
        fissure_dz=rng.uniform(-12.0, 12.0), hfissure_dz=rng.uniform(-10.0, 10.0),
        hu_fat=rng.uniform(-110.0, -80.0), hu_muscle=rng.uniform(36.0, 50.0),
    )


ARM_SPAN = 95.0  # mm beside the body taken by an arm held down (gap + arm width)


FISSURE_KX = 0.35


def oblique_z(p: PatientParams, side: int, x, y):
    """Height (mm) of the oblique fissure of one lung above the point (x, y)."""
    y0, z0, slope, _ = p.fissures(side)
    return z0 + slope * (y - y0) + FISSURE_KX * (np.abs(x - p.cx) - 60.0)


def lobe_of(p: PatientParams, lung: np.ndarray, x, y, z) -> np.ndarray:
    """Lobe codes (LOBES) for lung labels `lung` (1 right, 2 left) at broadcastable x, y, z (mm)."""
    out = np.zeros(np.broadcast_shapes(lung.shape, np.shape(x), np.shape(y), np.shape(z)), np.uint8)
    for side, lab, (up, mid, low) in ((-1, 1, (1, 2, 3)), (1, 2, (4, 4, 5))):
        y0, z0, slope, z_h = p.fissures(side)
        upper = z > oblique_z(p, side, x, y)
        m = np.broadcast_to(lung == lab, out.shape)
        lob = np.where(upper, np.where(z > z_h + 0.08 * (y - y0), up, mid), low)
        out[m] = np.broadcast_to(lob, out.shape)[m]
    return out


def fov_for(p: PatientParams) -> float:
    """Reconstruction field of view (mm) that holds the body and the table, as a tech would set."""
    need = max(abs(p.cx) + p.a + 12.0 + (ARM_SPAN if p.arms_down else 0.0), p.b * 2 - p.table_y + 12.0,
               p.table_y + 28.0)
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


# Lobe from (lung label * 4 + above the oblique fissure * 2 + above the horizontal fissure).
_LOBE_LUT = np.array([0, 0, 0, 0, 3, 3, 2, 1, 5, 5, 4, 4], np.uint8)


class AnatomyMaps:
    """Per-grid 2-D maps (z-invariant anatomy) plus the z-dependent slab renderer."""

    def __init__(self, p: PatientParams, ys: np.ndarray, xs: np.ndarray, pleural: Pleural | None = None,
                 blood_hu: float = HU["blood"]):
        self.p = p
        self.blood = float(blood_hu)  # heart, great vessels, lung vessels: contrast raises it
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
        tis = np.zeros(d_b.shape, np.uint8)
        # Table: carbon-fibre shell around a foam core, curved, under the patient.
        ty = p.table_y
        curve = ty - 0.0003 * (X - p.cx) ** 2  # cradle curves up at the sides
        tw = np.abs(X - p.cx) < 230
        shell = tw & (Y >= curve + 1) & (Y < curve + 4)
        core = tw & (Y >= curve + 4) & (Y < curve + 40)
        bshell = tw & (Y >= curve + 40) & (Y < curve + 44)
        base[core] = HU["table_core"]
        base[shell | bshell] = HU["table_shell"]
        tis[core | shell | bshell] = T["table"]
        if p.arms_down:  # arms beside the chest: skin, fat, muscle, humerus
            for side in (-1, 1):
                ax = p.cx + side * (p.a + ARM_SPAN / 2.0 + 4.0)
                ay = p.cy + 0.15 * p.b
                ra, rb = ARM_SPAN / 2.0 - 6.0, 0.62 * ARM_SPAN / 2.0 + 0.3 * p.fat
                qa = ((X - ax) / ra) ** 2 + ((Y - ay) / rb) ** 2
                qi = ((X - ax) / (ra - p.fat * 0.6 - 2)) ** 2 + ((Y - ay) / (rb - p.fat * 0.6 - 2)) ** 2
                qh = (X - ax) ** 2 + (Y - ay) ** 2
                for m, hu_, t_ in ((qa < 1, HU["skin"], T["soft_other"]), (qa < 0.9, p.hu_fat, T["fat"]),
                                   (qi < 1, p.hu_muscle, T["muscle"]), (qh < 12.0 ** 2, HU["cortex"], T["cortical_bone"]),
                                   (qh < 8.0 ** 2, HU["marrow"], T["trabecular_bone"])):
                    base[m] = hu_
                    tis[m] = t_
        base[body] = HU["skin"]
        tis[body] = T["soft_other"]
        base[d_b > p.skin] = p.hu_fat
        tis[d_b > p.skin] = T["fat"]
        base[d_b > p.skin + p.fat] = p.hu_muscle
        tis[d_b > p.skin + p.fat] = T["muscle"]
        cavity = d_b > W
        self.cavity = cavity
        base[cavity] = p.hu_fat  # mediastinal fat, overwritten below
        tis[cavity] = T["fat"]
        # Rib ring (bone drawn per slice), scapulae (upper chest), sternum.
        ring = (d_b > W - p.rib_w - 1) & (d_b <= W - 1)
        self.ring_idx = np.flatnonzero(ring)
        t = ((d_b - (W - p.rib_w - 1)) / p.rib_w).ravel()[self.ring_idx]
        self.ring_hu = np.where((t < 0.25) | (t > 0.75), HU["cortex"], HU["marrow"]).astype(np.float32)
        sr = s.ravel()[self.ring_idx]
        self.ring_hu[sr < -0.8] = HU["cartilage"]
        self.ring_t = np.where(self.ring_hu == HU["cortex"], T["cortical_bone"],
                               np.where(self.ring_hu == HU["marrow"], T["trabecular_bone"], T["soft_other"])).astype(np.uint8)
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
        tis[qvb < 1.25] = T["cortical_bone"]
        base[self.vb] = HU["marrow"]
        tis[self.vb] = T["trabecular_bone"]
        qcan = ((X - p.cx) ** 2 + (Y - (yvb + 26.0)) ** 2)
        post_el = (qcan < 16.0 ** 2) & (Y > yvb + 17.0)
        spinous = (np.abs(X - p.cx) < 4.0) & (Y > yvb + 26) & (Y < yvb + 52)
        base[post_el | spinous] = HU["cortex"]
        tis[post_el | spinous] = T["cortical_bone"]
        base[qcan < 9.5 ** 2] = HU["csf"]
        tis[qcan < 9.5 ** 2] = T["soft_other"]
        # Descending aorta and oesophagus in the posterior mediastinum.
        self.aorta_d = (p.cx + 25.0, yvb - 10.0)
        qao = (X - self.aorta_d[0]) ** 2 + (Y - self.aorta_d[1]) ** 2
        base[qao < 12.0 ** 2] = self.blood
        tis[qao < 12.0 ** 2] = T["blood"]
        qes = (X - (p.cx + 4.0)) ** 2 + (Y - (yvb - 25.0)) ** 2
        base[qes < 7.0 ** 2] = HU["soft"]
        tis[qes < 7.0 ** 2] = T["soft_other"]
        excl = (qvb < 1.9) | (qao < 16.0 ** 2) | (qes < 10.0 ** 2)
        self.med_free = cavity & ~excl
        self.lung_ok = self.med_free
        self.base = base
        self.tis = tis
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
        # Inflated parenchyma about -865 HU (-900 non-dependent .. -850 dependent; the texture adds a
        # little); texture is added per slab.
        self.paren = (HU["lung"] - 50.0 + 50.0 * grad).astype(np.float32)
        self.dz = self.dy  # slice spacing, set by the caller: partial volume of the fissures
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
                    les_hu: np.ndarray | None, les_lab: np.ndarray | None, airways,
                    aw_outer: np.ndarray | None = None, aw_lumen: np.ndarray | None = None,
                    texture=None) -> tuple:
        """HU (float32), lung labels, lesion labels, tissue classes and lobes for a slab of slices zs.

        vessel_u8/les_*/aw_* are the matching slabs of the pre-rasterised vessel fraction, lesion
        canvas and airway wall/lumen fractions (see vessels.py, lesions.py); texture is a
        texture.ParenchymaTexture (None: smooth parenchyma)."""
        p = self.p
        n = len(zs)
        hu = np.empty((n,) + self.base.shape, np.float32)
        hu[:] = self.base
        tis = np.empty(hu.shape, np.uint8)
        tis[:] = self.tis
        lung = np.zeros(hu.shape, np.uint8)
        lab = np.zeros(hu.shape, np.uint8)
        lobe = np.zeros(hu.shape, np.uint8)
        wy, wx = self.win
        hw = hu[:, wy, wx]  # views
        tw = tis[:, wy, wx]
        flat = hu.reshape(n, -1)
        tflat = tis.reshape(n, -1)
        for k, z in enumerate(zs):
            ph = ((z + self.ring_off) / p.rib_pitch + p.rib_phase) % 1.0
            on = ph < 0.38
            flat[k, self.ring_idx[on]] = self.ring_hu[on]
            tflat[k, self.ring_idx[on]] = self.ring_t[on]
            if p.z_apex + 15 > z > p.z_apex - 140:
                hu[k][self.scap] = HU["scapula"]
                tis[k][self.scap] = T["cortical_bone"]
            if p.z_apex - 5 > z > p.z_dome_r + 10:
                hu[k][self.sternum] = HU["cortex"]
                hu[k][self.sternum_core] = HU["marrow"]
                tis[k][self.sternum] = T["cortical_bone"]
                tis[k][self.sternum_core] = T["trabecular_bone"]
            if ((z / 27.0 + p.rib_phase) % 1.0) < 0.22:
                hu[k][self.vb] = HU["disc"]
                tis[k][self.vb] = T["soft_other"]
        # Heart and great vessels.
        hx, hy, hz = p.heart_c
        hrz = p.heart_r[2]
        Z = zs[:, None, None]
        mf = self.med_free[wy, wx][None]
        qh = self.q_heart[wy, wx][None] + (((zs - hz) / hrz) ** 2)[:, None, None]
        m = (qh < 1.15) & mf
        hw[m] = p.hu_fat
        tw[m] = T["fat"]
        blood = (qh < 1.0) & mf
        asc_on = ((zs < p.z_arch) & (zs > hz + 0.4 * hrz))[:, None, None]
        blood |= asc_on & (self.q_asc[wy, wx] < 15.0 ** 2)[None]
        arch_on = (np.abs(zs - p.z_arch) < 11.0)[:, None, None]
        blood |= arch_on & (self.q_arch[wy, wx] < 12.5 ** 2)[None]
        pt_on = ((zs < p.z_carina - 6.0) & (zs > hz + 0.45 * hrz))[:, None, None]
        blood |= pt_on & (self.q_pt[wy, wx] < 14.0 ** 2)[None]
        hw[blood] = self.blood
        tw[blood] = T["blood"]
        # Abdomen below the diaphragm (muscle band just under the dome).
        dab = self.dome_ab[wy, wx][None]
        below = (Z <= dab) & mf
        if below.any():
            hw[below] = np.broadcast_to(self.abd[wy, wx], below.shape)[below]
            tw[below] = T["soft_other"]
            dia = below & (Z > dab - 5.0)
            hw[dia] = p.hu_muscle
            tw[dia] = T["muscle"]
        # Trachea last among mediastinal structures (the arch passes beside it).
        for k, z in enumerate(zs):
            if z > p.z_carina:
                hu[k][self.trachea_wall] = HU["soft"]
                hu[k][self.trachea_air] = HU["air"]
                tis[k][self.trachea_wall] = T["airway_wall"]
                tis[k][self.trachea_air] = T["airway_lumen"]
        # Lungs. Work below is on the cavity window; sparse structures (lesions, fissures, vessels,
        # airways) are blended at their own voxels only, full-window passes are kept few: this is
        # the generator's hot loop (a 300 x 512 x 512 volume is ~40 M window voxels).
        L = self.lung_labels(zs)
        pl = self.pleural
        eff = self.pleural_bands(L, zs, pl.effusion_sides, pl.effusion_depth, pl.effusion_top)
        atel = self.pleural_bands(L, zs, pl.atelectasis_sides, pl.atelectasis_depth, pl.atelectasis_top) & ~eff
        L[eff] = 0
        inl = L > 0
        ysw, xsw = self.ys[wy], self.xs[wx]
        P = np.broadcast_to(self.paren[wy, wx], L.shape).copy()
        coarse = fine = None
        if texture is not None:
            fine, coarse = texture.sample(zs, ysw, xsw)
            P += fine
        Pf = P.reshape(-1)
        tl = np.full(L.shape, T["lung"], np.uint8)
        tlf = tl.reshape(-1)
        labw = np.zeros(L.shape, np.uint8)
        if les_w is not None:
            assert les_hu is not None and les_lab is not None, "lesion slabs come together"
            lw = les_w[:, wy, wx]
            has = (lw > 0) & inl
            if has.any():
                w = lw[has].astype(np.float32) * np.float32(1 / 255.0)
                ll = les_lab[:, wy, wx][has]
                target = les_hu[:, wy, wx][has].astype(np.float32)
                if coarse is not None:  # GGO: patchy density and irregular margins, not a uniform blob
                    gg = (ll == 1) | (ll == 2)
                    cg = coarse[has][gg]
                    target[gg] += 70.0 * cg
                    g1 = ll == 1  # pure GGO stays in its published range (crazy paving keeps its septal lines)
                    target[g1] = np.clip(target[g1], -720.0, -320.0)
                    wg = w[gg]
                    w[gg] = np.where(wg < 1.0, np.clip(wg + 0.3 * cg, 0.0, 1.0), wg)
                ph = P[has]
                ph += w * (target - ph)
                if fine is not None:  # GGO and consolidation keep a grainy texture
                    ph += (0.8 * w * (ll > 0)) * fine[has]
                P[has] = ph
                strong = (lw >= 128) & inl
                labw[strong] = les_lab[:, wy, wx][strong]
        P[atel] = HU["atelectasis"]
        labw[atel] = 7
        tl[labw > 0] = T["lesion"]
        labf = labw.reshape(-1)
        Lf = L.reshape(-1)
        # Lobes: above the oblique fissure (upper lobe) <=> in front of its row y_f(z, x); the right
        # upper lobe is above the horizontal fissure. Same geometry as lobe_of, computed per column.
        n_, wy_n, wx_n = L.shape
        pv = self.dy
        y00 = float(ysw[0]) if len(ysw) else 0.0
        jf = np.empty((n_, wx_n), np.float32)
        xs_abs = np.abs(xsw - p.cx) - 60.0
        right_cols = xsw < p.cx
        fis = {}
        for side in (-1, 1):
            y0, z0, slope, z_h = p.fissures(side)
            yf = y0 + (zs[:, None] - z0 - FISSURE_KX * xs_abs[None, :]) / slope  # (n, wx) mm
            cols = right_cols if side < 0 else ~right_cols
            jf[:, cols] = ((yf - y00) / pv)[:, cols]
            fis[side] = (yf, slope)
        rows = np.arange(wy_n, dtype=np.float32)
        upper: np.ndarray = rows[None, :, None] < jf[:, None, :]
        y0r, _, _, z_hr = p.fissures(-1)
        above_h: np.ndarray = (zs[:, None] > z_hr + 0.08 * (ysw[None, :] - y0r))[:, :, None]
        code = L * np.uint8(4)
        code += upper.view(np.uint8) * np.uint8(2)
        code += above_h.view(np.uint8)
        lobe_w = _LOBE_LUT[code]
        # Fissures: thin dense sheets with partial volume over the voxel (dz x dy): only the rows
        # within reach of each column's fissure row are evaluated.
        for side, lab_ in ((-1, 1), (1, 2)):
            yf, slope = fis[side]
            nrm = 1.0 / np.sqrt(1.0 + slope * slope + FISSURE_KX ** 2)
            weff = float(np.sqrt((self.dz * nrm) ** 2 + (pv * np.hypot(slope, FISSURE_KX) * nrm) ** 2))
            amp = min(1.0, 1.2 / weff)
            B = int(np.ceil(weff / (slope * nrm) / pv)) + 1
            cidx = np.flatnonzero(right_cols if side < 0 else ~right_cols)
            if not len(cidx):
                continue
            J = np.floor((yf[:, cidx] - y00) / pv).astype(np.int64)[..., None] + np.arange(-B, B + 1)
            a = np.clip(1.0 - (slope * nrm) * np.abs(y00 + J * pv - yf[:, cidx][..., None]) / weff, 0.0, 1.0) * amp
            kk = np.broadcast_to(np.arange(n_)[:, None, None], J.shape)
            ii = np.broadcast_to(cidx[None, :, None], J.shape)
            ok = (J >= 0) & (J < wy_n) & (a > 0.02)
            idx = (kk[ok] * wy_n + J[ok]) * wx_n + ii[ok]
            av = a[ok].astype(np.float32)
            sel = Lf[idx] == lab_
            idx, av = idx[sel], av[sel]
            Pf[idx] += av * (HU["fissure"] - Pf[idx])
            thin = idx[(av >= 0.45 * amp) & (labf[idx] == 0)]
            tlf[thin] = T["fissure"]
        # Right horizontal fissure: nearly parallel to the slices, so only a few slices meet it.
        we = max(float(self.dz), pv)
        dh = zs[:, None] - (z_hr + 0.08 * (ysw[None, :] - y0r))  # (n, wy)
        for k in np.flatnonzero((np.abs(dh) < we).any(axis=1)).tolist():
            a1 = np.clip(1.0 - np.abs(dh[k]) / we, 0.0, 1.0) * min(1.0, 1.2 / we)
            m = (L[k] == 1) & (a1[:, None] > 0.02) & (rows[:, None] < jf[k][None, :] + 2.0)
            if m.any():
                am = np.broadcast_to(a1[:, None], m.shape)[m]
                P[k][m] += am * (HU["fissure"] - P[k][m])
                t = tl[k]
                t[m & (np.broadcast_to(a1[:, None], m.shape) >= 0.45 * min(1.0, 1.2 / we)) & (labw[k] == 0)] = T["fissure"]
        # Vessels (kept visible through GGO: drawn after the lesions), then airway walls and lumens.
        if vessel_u8 is not None:
            vf = np.ascontiguousarray(vessel_u8[:, wy, wx]).reshape(-1)
            idx = np.flatnonzero(vf)
            fv = vf[idx].astype(np.float32) * np.float32(1 / 255.0)
            Pf[idx] += fv * (self.blood - Pf[idx])
            tlf[idx[fv >= 0.5]] = T["lung_vessel"]
        if aw_outer is not None and aw_lumen is not None:
            fo = np.ascontiguousarray(aw_outer[:, wy, wx]).reshape(-1)
            idx = np.flatnonzero(fo)
            if len(idx):
                fl = np.ascontiguousarray(aw_lumen[:, wy, wx]).reshape(-1)[idx]
                fw = fo[idx].astype(np.float32) * np.float32(1 / 255.0)
                v = Pf[idx]
                v += fw * (HU["airway_wall"] - v)
                v += (fl.astype(np.float32) * np.float32(1 / 255.0)) * (HU["air"] - v)
                Pf[idx] = v
                tlf[idx[fw >= 0.5]] = T["airway_wall"]
                tlf[idx[fl >= 128]] = T["airway_lumen"]
        np.copyto(hw, P, where=inl)
        np.copyto(tw, tl, where=inl)
        hw[eff] = HU["effusion"]
        tw[eff] = T["effusion"]
        if airways is not None:  # main and lobar bronchi stay air-filled even inside the lung
            airways.paint(hw, zs, ysw, xsw, tw)
        labw[eff] = 6
        lung[:, wy, wx] = L
        lab[:, wy, wx] = labw
        lobe[:, wy, wx] = lobe_w
        return hu, lung, lab, tis, lobe
