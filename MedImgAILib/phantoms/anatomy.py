"""The analytic chest: every structure is a continuous object (ellipse, ellipsoid, tapered capsule,
implicit lung surface), so any voxel grid can be rendered from it and truth is exact.

Frame: DICOM patient LPS mm (x to the patient's left, y posterior, z superior); x = 0 mid-sagittal,
y = 0 the chest's centre, z = 0 about the carina. Sizes are those of an average adult and are scaled
per case by the anatomy seed (lateral, AP and craniocaudal factors of 0.9-1.1).

Signed distances (negative inside) are first-order approximations (implicit value over gradient
norm): exact on the surface, good within a few mm of it, which is all partial-volume ramps need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --- materials --------------------------------------------------------------------------------------
#: HU at 120 kVp without contrast. Published ranges: fat -120..-80, muscle 35..55, blood 35..45,
#: liver 50..65, aerated lung -900..-800 (denser in dependent parts), cancellous bone 150..300,
#: cortical bone 700..1200, cartilage 80..130, CSF 0..20.
BASE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "mediastinal_fat": -95.0,
    "muscle": 45.0,
    "soft_tissue": 40.0,
    "blood": 40.0,
    "myocardium": 45.0,
    "liver": 58.0,
    "bone_cortical": 900.0,
    "bone_cancellous": 220.0,
    "sternum": 380.0,
    "disc": 90.0,
    "csf": 15.0,
    "airway_wall": 40.0,
    "table": 120.0,
    "pad": -880.0,
    "vessel": 40.0,
    "aorta": 40.0,
}
BONES = {"bone_cortical", "bone_cancellous", "sternum"}
FATS = {"fat", "mediastinal_fat"}
#: iodine enhancement (HU added at 120 kVp) per contrast phase
CONTRAST_HU: dict[str, dict[str, float]] = {
    "none": {},
    "venous": {"blood": 130.0, "vessel": 120.0, "aorta": 130.0, "liver": 45.0, "myocardium": 40.0},
    "arterial": {"blood": 250.0, "vessel": 200.0, "aorta": 280.0, "liver": 15.0, "myocardium": 50.0},
}


def material_hu(kvp: float, contrast: str) -> dict[str, float]:
    """HU per material at ``kvp``: bone and iodine attenuate relatively more at low kVp (photoelectric
    effect), fat a little more negative; water-like tissue is pinned near its 120 kVp value."""
    ratio = 120.0 / kvp
    out: dict[str, float] = {}
    for name, hu in BASE_HU.items():
        if name in BONES:
            hu = hu * ratio**0.45
        elif name in FATS:
            hu = hu * ratio**0.3
        hu += CONTRAST_HU[contrast].get(name, 0.0) * ratio**1.3
        out[name] = float(hu)
    return out


# --- signed distances -------------------------------------------------------------------------------
def ellipse_sdf(x: np.ndarray, y: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    """Approximate signed distance to the ellipse (x/a)^2 + (y/b)^2 = 1 (negative inside)."""
    f = (x / a) ** 2 + (y / b) ** 2 - 1.0
    g = 2.0 * np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return f / np.maximum(g, 1e-6)


def ellipsoid_sdf(x, y, z, a: float, b: float, c: float) -> np.ndarray:
    f = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 - 1.0
    g = 2.0 * np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2 + (z / (c * c)) ** 2)
    return f / np.maximum(g, 1e-6)


# --- primitives ---------------------------------------------------------------------------------------
@dataclass
class Extruded:
    """A 2D shape (ellipse, or rectangle when ``rect``) extruded along z over [z0, z1]."""

    name: str
    material: str
    cx: float
    cy: float
    a: float
    b: float
    z0: float = -1e9
    z1: float = 1e9
    rect: bool = False

    def sdf2d(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.rect:
            return np.maximum(np.abs(x - self.cx) - self.a, np.abs(y - self.cy) - self.b)
        return ellipse_sdf(x - self.cx, y - self.cy, self.a, self.b)


@dataclass
class Ellipsoid:
    name: str
    material: str
    center: tuple[float, float, float]
    axes: tuple[float, float, float]

    def section(self, z: float) -> tuple[float, float] | None:
        """Semi-axes of the axial cross-section at z, or None when z misses the ellipsoid."""
        t = 1.0 - ((z - self.center[2]) / self.axes[2]) ** 2
        if t <= 1e-4:
            return None
        s = float(np.sqrt(t))
        return self.axes[0] * s, self.axes[1] * s

    def sdf(self, x, y, z) -> np.ndarray:
        c = self.center
        return ellipsoid_sdf(x - c[0], y - c[1], z - c[2], *self.axes)


@dataclass
class Lung:
    """One lung: an elliptic cylinder (cross-section narrowing to the apex), cut by the thoracic wall,
    the diaphragmatic dome and the heart."""

    side: str  # "right" (x < 0) or "left"
    cx: float
    cy: float
    a: float
    b: float
    z_apex: float
    apex_len: float
    z_dome: float  # dome top (centre of the base)
    dome_depth: float  # how far the costophrenic recess lies below the dome top
    thorax_a: float
    thorax_b: float
    heart: Ellipsoid
    heart_gap: float = 3.0
    hu_anterior: float = -895.0
    hu_posterior: float = -815.0
    #: oblique fissure z = obl_z0 + obl_slope * (y - cy): rising posteriorly, from the base anteriorly
    #: to above the hilum posteriorly; right lung also a horizontal fissure at z = horiz_z in front of it
    obl_z0: float = -40.0
    obl_slope: float = 1.1
    obl_lateral: float = 0.45
    horiz_z: float | None = None
    #: visceral pleura of the fissures: thickness (mm) and HU of the sheet
    fissure_mm: float = 0.3

    @property
    def z_bottom(self) -> float:
        """Lowest point of the lung (the deepest recess), mm."""
        return self.z_dome - self.dome_depth * 1.21  # rho^2 capped at 1.21 (see below)

    def scale(self, z):
        return np.sqrt(np.clip((self.z_apex - z) / self.apex_len, 1e-6, 1.0))

    def z_diaphragm(self, x, y):
        rho2 = np.minimum(((x - self.cx) / self.a) ** 2 + ((y - self.cy) / self.b) ** 2, 1.21)
        return self.z_dome - self.dome_depth * rho2, rho2

    def sdf(self, x, y, z) -> np.ndarray:
        g = self.scale(z)
        d = ellipse_sdf(x - self.cx, y - self.cy, self.a * g, self.b * g)
        d = np.maximum(d, ellipse_sdf(x, y, self.thorax_a, self.thorax_b))
        zd, rho2 = self.z_diaphragm(x, y)
        grad = 2.0 * self.dome_depth * np.sqrt(((x - self.cx) / self.a**2) ** 2 + ((y - self.cy) / self.b**2) ** 2)
        grad = np.where(rho2 >= 1.21, 0.0, grad)
        d = np.maximum(d, (zd - z) / np.sqrt(1.0 + grad * grad))
        d = np.maximum(d, self.heart_gap - self.heart.sdf(x, y, z))
        return d

    def bounds_xy(self, z: float) -> tuple[float, float, float, float] | None:
        if z >= self.z_apex or z < self.z_bottom - 1.0:
            return None
        g = float(self.scale(z))
        return (self.cx - self.a * g, self.cx + self.a * g, self.cy - self.b * g, self.cy + self.b * g)

    #: parenchymal heterogeneity: plane waves (wave vectors rad/mm, phases) and amplitude (HU)
    texture_k: np.ndarray | None = None
    texture_phase: np.ndarray | None = None
    texture_hu: float = 12.0

    def hu(self, y: np.ndarray, x: np.ndarray | None = None, z: float | None = None) -> np.ndarray:
        """Dependent (posterior) lung is denser: a linear AP gradient, plus (given x and z) a smooth
        heterogeneity of a few HU on a 1.5-5 cm scale, as perfusion and aeration vary."""
        t = np.clip((y - (self.cy - self.b)) / (2 * self.b), 0.0, 1.0)
        base = self.hu_anterior + (self.hu_posterior - self.hu_anterior) * t
        if self.texture_k is None or x is None or z is None:
            return base
        amp = self.texture_hu * np.sqrt(2.0 / len(self.texture_k))
        xr, yr = np.ravel(x), np.ravel(y)
        if np.ndim(x) == 2 and np.ndim(y) == 2 and np.shape(x)[0] == 1 and np.shape(y)[1] == 1:
            # a grid: cos(a(x) + b(y)) = cos a cos b - sin a sin b, summed over waves = one matmul
            a = np.outer(xr, self.texture_k[:, 0])  # (ni, W)
            b = np.outer(yr, self.texture_k[:, 1]) + (self.texture_k[:, 2] * z + self.texture_phase)[None, :]
            U = np.concatenate([np.cos(b), -np.sin(b)], axis=1)  # (nj, 2W)
            V = np.concatenate([np.cos(a), np.sin(a)], axis=1)  # (ni, 2W)
            return base + (amp * (U @ V.T)).astype(np.float32)
        acc = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), dtype=np.float64)
        for (kx, ky, kz), ph in zip(self.texture_k, self.texture_phase):
            acc += np.cos(kx * x + ky * y + (kz * z + ph))
        return base + amp * acc

    def fissure_distances(self, x, y, z) -> list[np.ndarray]:
        """Signed distances (mm) to the fissure sheets; the horizontal one is +inf behind the oblique."""
        k, kx = self.obl_slope, self.obl_slope * self.obl_lateral
        # laterally the fissure lies further forward, so an axial slice cuts it as an oblique line
        lat = (x - self.cx) * (1.0 if self.side == "left" else -1.0)
        d_obl = (z - self.obl_z0 - k * (y - self.cy) - kx * lat) / np.sqrt(1.0 + k * k + kx * kx)
        out = [d_obl]
        if self.horiz_z is not None:
            out.append(np.where(d_obl > 0, z - self.horiz_z, np.inf))
        return out

    def fissure_normals(self) -> list[np.ndarray]:
        k, kx = self.obl_slope, self.obl_slope * self.obl_lateral
        sgn = 1.0 if self.side == "left" else -1.0
        n = [np.array([-kx * sgn, -k, 1.0]) / np.sqrt(1.0 + k * k + kx * kx)]
        if self.horiz_z is not None:
            n.append(np.array([0.0, 0.0, 1.0]))
        return n

    def lobe(self, p) -> str:
        """Lobe by the fissure planes."""
        d = self.fissure_distances(*p)
        if float(d[0]) < 0:
            return "RLL" if self.side == "right" else "LLL"
        if self.side == "right":
            return "RUL" if float(d[1]) > 0 else "RML"
        return "LUL"


@dataclass
class CapsuleSet:
    """Tapered capsules (segment a->b, radius ra at a and rb at b) of one material. Capsules of one
    set are merged by union (maximum occupancy) before they are painted."""

    name: str
    material: str
    a: np.ndarray  # (N, 3)
    b: np.ndarray  # (N, 3)
    ra: np.ndarray  # (N,)
    rb: np.ndarray  # (N,)

    @classmethod
    def from_list(cls, name: str, material: str, segs: list[tuple]) -> "CapsuleSet":
        if not segs:
            z = np.zeros((0, 3))
            return cls(name, material, z, z.copy(), np.zeros(0), np.zeros(0))
        a = np.array([s[0] for s in segs], dtype=np.float64)
        b = np.array([s[1] for s in segs], dtype=np.float64)
        ra = np.array([s[2] for s in segs], dtype=np.float64)
        rb = np.array([s[3] for s in segs], dtype=np.float64)
        return cls(name, material, a, b, ra, rb)

    def __len__(self) -> int:
        return len(self.ra)

    def pieces(self, max_len: float = 3.0) -> "CapsuleSet":
        """Long capsules cut into short ones so that each one's bounding box is tight."""
        if len(self) == 0:
            return self
        L = np.linalg.norm(self.b - self.a, axis=1)
        n = np.maximum(1, np.ceil(L / np.maximum(max_len, 2.0 * np.maximum(self.ra, self.rb)))).astype(int)
        seg = np.repeat(np.arange(len(L)), n)
        first = np.repeat(np.cumsum(n) - n, n)
        q = np.arange(len(seg)) - first  # piece index within its capsule
        t0 = (q / n[seg])[:, None]
        t1 = ((q + 1) / n[seg])[:, None]
        d = self.b[seg] - self.a[seg]
        dr = (self.rb - self.ra)[seg]
        return CapsuleSet(self.name, self.material, self.a[seg] + t0 * d, self.a[seg] + t1 * d,
                          self.ra[seg] + dr * t0[:, 0], self.ra[seg] + dr * t1[:, 0])

    def min_distance(self, p: np.ndarray) -> np.ndarray:
        """Signed distance from point p (3,) to each capsule surface."""
        ba = self.b - self.a
        pa = p[None, :] - self.a
        t = np.clip(np.einsum("ij,ij->i", pa, ba) / np.maximum(np.einsum("ij,ij->i", ba, ba), 1e-12), 0, 1)
        d = np.linalg.norm(pa - t[:, None] * ba, axis=1)
        return d - (self.ra + (self.rb - self.ra) * t)


@dataclass
class Anatomy:
    """All the structures of one case, in painting order groups."""

    scale: tuple[float, float, float]
    extruded: list[Extruded]
    lungs: list[Lung]
    heart_layers: list[Ellipsoid]  # painted in order (pericardial fat, then heart)
    liver_side: Lung  # the liver fills the right subdiaphragmatic space under this lung's dome
    #: capsule sets painted after the lungs, before nodules (bones, mediastinal vessels, airways)
    capsules_pre: list[CapsuleSet]
    #: pulmonary vessel trees (painted after ground-glass nodules, before solid ones)
    vessels: CapsuleSet
    body: Extruded
    stats: dict = field(default_factory=dict)

    @property
    def lung_z_range(self) -> tuple[float, float]:
        return (min(l.z_bottom for l in self.lungs), max(l.z_apex for l in self.lungs))

    def lung_sdf(self, x, y, z) -> np.ndarray:
        return np.minimum(self.lungs[0].sdf(x, y, z), self.lungs[1].sdf(x, y, z))


# --- building --------------------------------------------------------------------------------------
def build_anatomy(seed: int, vary: bool = True, table: bool = True, vessel_points: int = 900) -> Anatomy:
    rng = np.random.default_rng([int(seed), 101])
    if vary:
        sx, sy, sz = (float(v) for v in rng.uniform([0.9, 0.9, 0.92], [1.1, 1.1, 1.08]))
    else:
        sx = sy = sz = 1.0
    sr = (sx + sy) / 2.0  # radii of tubes scale with the mean in-plane factor

    def P(x, y, z):
        return (x * sx, y * sy, z * sz)

    body_a, body_b = 170.0 * sx, 125.0 * sy
    ext: list[Extruded] = []
    if table:
        # patient lies supine: the table is posterior (+y); a foam pad then a carbon-fibre board
        ext.append(Extruded("pad", "pad", 0.0, body_b + 4.0, 180.0, 4.0, rect=True))
        ext.append(Extruded("table", "table", 0.0, body_b + 11.0, 215.0, 2.5, rect=True))
    body = Extruded("body", "fat", 0.0, 0.0, body_a, body_b)
    ext.append(body)
    ext.append(Extruded("muscle", "muscle", 0.0, 0.0, body_a - 15.0 * sx, body_b - 13.0 * sy))
    ext.append(Extruded("thorax", "soft_tissue", 0.0, 0.0, body_a - 29.0 * sx, body_b - 27.0 * sy))
    ext.append(Extruded("mediastinal_fat", "mediastinal_fat", 0.0, -28.0 * sy, 26.0 * sx, 42.0 * sy,
                        z0=-10.0 * sz, z1=115.0 * sz))
    ext.append(Extruded("sternum", "sternum", 0.0, -body_b + 22.0 * sy, 14.0 * sx, 6.0 * sy,
                        z0=-95.0 * sz, z1=105.0 * sz))
    # spine: vertebral bodies with intervertebral discs every ~32 mm, canal, posterior arch
    vy = 62.0 * sy
    z = -400.0
    while z < 400.0:
        ext.append(Extruded("vertebra", "bone_cortical", 0.0, vy, 17.0 * sr, 16.0 * sr, z0=z * sz, z1=(z + 26.0) * sz))
        ext.append(Extruded("vertebra_core", "bone_cancellous", 0.0, vy, 14.5 * sr, 13.5 * sr, z0=z * sz, z1=(z + 26.0) * sz))
        ext.append(Extruded("disc", "disc", 0.0, vy, 17.0 * sr, 16.0 * sr, z0=(z + 26.0) * sz, z1=(z + 32.0) * sz))
        z += 32.0
    ext.append(Extruded("arch", "bone_cortical", 0.0, vy + 28.0 * sy, 14.0 * sr, 12.0 * sr))
    ext.append(Extruded("canal", "csf", 0.0, vy + 27.0 * sy, 8.0 * sr, 8.0 * sr))
    ext.append(Extruded("spinous", "bone_cortical", 0.0, vy + 45.0 * sy, 5.0 * sr, 9.0 * sy))
    ext.append(Extruded("esophagus", "soft_tissue", 6.0 * sx, vy - 26.0 * sy, 8.0 * sr, 7.0 * sr))
    ext.append(Extruded("esophagus_air", "air", 6.0 * sx, vy - 26.0 * sy, 2.0, 1.5))

    heart = Ellipsoid("heart", "myocardium", P(20.0, -25.0, -55.0), (62.0 * sx, 48.0 * sy, 52.0 * sz))
    peri = Ellipsoid("pericardial_fat", "mediastinal_fat", heart.center,
                     (heart.axes[0] + 4.0, heart.axes[1] + 4.0, heart.axes[2] + 4.0))
    chamber = Ellipsoid("heart_blood", "blood", heart.center,
                        (heart.axes[0] - 9.0, heart.axes[1] - 9.0, heart.axes[2] - 9.0))
    thorax_a, thorax_b = body_a - 31.0 * sx, body_b - 29.0 * sy
    jit = (lambda: float(rng.uniform(-4, 4))) if vary else (lambda: 0.0)
    fiss = dict(obl_z0=-40.0 * sz, obl_slope=1.1 * sz / sy)
    right = Lung("right", -78.0 * sx, 4.0 * sy, 62.0 * sx, 88.0 * sy, (125.0 + jit()) * sz, 70.0 * sz,
                 (-70.0 + jit()) * sz, 60.0 * sz, thorax_a, thorax_b, peri, horiz_z=-5.0 * sz, **fiss)
    left = Lung("left", 80.0 * sx, 4.0 * sy, 60.0 * sx, 88.0 * sy, (120.0 + jit()) * sz, 70.0 * sz,
                (-80.0 + jit()) * sz, 60.0 * sz, thorax_a, thorax_b, peri, **fiss)

    tex_rng = np.random.default_rng([int(seed), 505])
    for lung in (right, left):
        dirs = tex_rng.normal(size=(6, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lung.texture_k = dirs * (2 * np.pi / tex_rng.uniform(15.0, 50.0, size=(6, 1)))
        lung.texture_phase = tex_rng.uniform(0, 2 * np.pi, size=6)

    # ribs: 12 pairs along an ellipse just outside the lungs, sloping down anteriorly
    rib_a, rib_b = body_a - 24.0 * sx, body_b - 22.0 * sy
    cort, marrow = [], []
    for k in range(12):
        z_post = (118.0 - 21.0 * k) * sz
        for s in (-1.0, 1.0):
            phis = np.linspace(0.32, 2.45 - 0.04 * k, 11)
            pts = [(s * rib_a * np.sin(p), rib_b * np.cos(p), z_post - 55.0 * sz * (p - 0.32) / 2.1) for p in phis]
            for p0, p1 in zip(pts[:-1], pts[1:]):
                cort.append((p0, p1, 5.5 * sr, 5.5 * sr))
                marrow.append((p0, p1, 3.2 * sr, 3.2 * sr))

    # mediastinal vessels and airways (coarse, but in the right places)
    def seg(p, q, r0, r1=None):
        return (P(*p), P(*q), r0 * sr, (r1 if r1 is not None else r0) * sr)

    aorta = [
        seg((-12, -22, -25), (-10, -15, 55), 15),
        seg((-10, -15, 55), (0, 10, 75), 14, 13),
        seg((0, 10, 75), (18, 38, 62), 13, 12),
        seg((18, 38, 62), (20, 48, 30), 12),
        seg((20, 48, 30), (18, 50, -400), 12, 11),
        seg((-5, -5, 72), (-22, -12, 400), 7),  # brachiocephalic trunk
        seg((5, 2, 74), (16, -4, 400), 5),  # left common carotid
        seg((12, 14, 72), (32, 12, 400), 6),  # left subclavian
    ]
    systemic_veins = [
        seg((-32, -18, -15), (-32, -18, 400), 10),  # superior vena cava
        seg((-20, 12, -400), (-20, 12, -75), 12),  # inferior vena cava
    ]
    r_hilum = P(-48.0, 4.0, 8.0)
    l_hilum = P(52.0, 10.0, 14.0)
    r_vhilum = P(-42.0, 18.0, -30.0)
    l_vhilum = P(42.0, 22.0, -35.0)
    pa = [
        seg((8, -40, -25), (22, -18, 12), 14),  # pulmonary trunk
        (P(22, -18, 12), l_hilum, 11 * sr, 10 * sr),
        (P(22, -18, 12), r_hilum, 11 * sr, 10 * sr),
        (P(12, 20, -38), r_vhilum, 8 * sr, 7 * sr),  # pulmonary veins to the left atrium
        (P(12, 20, -38), l_vhilum, 8 * sr, 7 * sr),
    ]
    carina = P(0.0, 22.0, 22.0)
    airway_wall = [
        (P(0, 20, 400), carina, 10.5 * sr, 10.5 * sr),
        (carina, P(-45, 14, 2), 8.5 * sr, 7.5 * sr),
        (carina, P(48, 20, -2), 8.0 * sr, 7.0 * sr),
    ]
    airway_lumen = [(a, b, ra - 2.0, rb - 2.0) for a, b, ra, rb in airway_wall]

    # pulmonary vessel trees: arteries from the hila, veins to the lower hila, both space-filling
    vessel_rng = np.random.default_rng([int(seed), 202])
    trees: list[tuple] = []
    br_wall: list[tuple] = []
    br_lumen: list[tuple] = []
    for lung, hilum, vhilum in ((right, r_hilum, r_vhilum), (left, l_hilum, l_vhilum)):
        for root, r0, artery in ((hilum, 7.0 * sr, True), (vhilum, 6.0 * sr, False)):
            pts = _sample_in_lung(lung, vessel_points, vessel_rng, margin=4.0)
            segs = _grow_tree(np.asarray(root, float), pts, r0, vessel_rng)
            trees.extend(segs)
            if artery:
                w, lu = _bronchi(segs, 1.0 if lung.side == "left" else -1.0)
                br_wall.extend(w)
                br_lumen.extend(lu)

    caps_pre = [
        CapsuleSet.from_list("rib_cortex", "bone_cortical", cort),
        CapsuleSet.from_list("rib_marrow", "bone_cancellous", marrow),
        CapsuleSet.from_list("aorta", "aorta", aorta),
        CapsuleSet.from_list("systemic_veins", "blood", systemic_veins),
        CapsuleSet.from_list("pulmonary_trunks", "vessel", pa),
        CapsuleSet.from_list("airway_wall", "airway_wall", airway_wall),
        CapsuleSet.from_list("airway_lumen", "air", airway_lumen),
        CapsuleSet.from_list("bronchial_wall", "airway_wall", br_wall),
        CapsuleSet.from_list("bronchial_lumen", "air", br_lumen),
    ]
    vessels = CapsuleSet.from_list("pulmonary_vessels", "vessel", trees)
    return Anatomy(
        scale=(sx, sy, sz), extruded=ext, lungs=[right, left], heart_layers=[peri, heart, chamber],
        liver_side=right, capsules_pre=caps_pre, vessels=vessels, body=body,
        stats={"vessel_segments": len(vessels), "bronchial_segments": len(br_lumen)},
    )


def _bronchi(artery_segs: list[tuple], side: float, r_min: float = 1.3) -> tuple[list[tuple], list[tuple]]:
    """Bronchi beside the arteries (bronchovascular bundles) down to arteries of ``r_min`` mm: a
    lumen ~0.75 of the artery's radius, a wall ~0.3 of the lumen's radius (at least 0.35 mm), offset
    sideways by a direction that varies smoothly with the branch direction so the airway tree stays
    continuous at bifurcations."""
    ref = np.array([0.35 * side, 1.0, 0.25])
    ref /= np.linalg.norm(ref)
    walls, lumens = [], []
    for a, b, ra, rb in artery_segs:
        if ra < r_min:
            continue
        d = np.asarray(b) - np.asarray(a)
        L = float(np.linalg.norm(d))
        if L < 1e-6:
            continue
        d /= L
        perp = ref - (ref @ d) * d
        if np.linalg.norm(perp) < 0.2:
            perp = np.cross(d, [1.0, 0.0, 0.0])
        perp /= np.linalg.norm(perp)
        la, lb = 0.75 * ra, 0.75 * rb
        wa, wb = max(0.35, 0.3 * la), max(0.35, 0.3 * lb)
        pa = np.asarray(a) + perp * (ra + la + wa + 0.2)
        pb = np.asarray(b) + perp * (rb + lb + wb + 0.2)
        walls.append((pa, pb, la + wa, lb + wb))
        lumens.append((pa, pb, la, lb))
    return walls, lumens


def _sample_in_lung(lung: Lung, n: int, rng: np.random.Generator, margin: float) -> np.ndarray:
    """n points uniformly inside the lung, at least ``margin`` mm from its surface."""
    lo = np.array([lung.cx - lung.a, lung.cy - lung.b, lung.z_bottom])
    hi = np.array([lung.cx + lung.a, lung.cy + lung.b, lung.z_apex])
    out: list[np.ndarray] = []
    have = 0
    while have < n:
        p = rng.uniform(lo, hi, size=(4 * n, 3))
        p = p[lung.sdf(p[:, 0], p[:, 1], p[:, 2]) < -margin]
        out.append(p)
        have += len(p)
    return np.concatenate(out)[:n]


def _grow_tree(root: np.ndarray, pts: np.ndarray, r0: float, rng: np.random.Generator,
               r_min: float = 0.6) -> list[tuple]:
    """Space-filling vessel tree by recursive territory bisection: each branch heads part-way to the
    centroid of the lung territory it supplies, then splits that territory in two across its longest
    axis. Radii follow Murray's law (r^3 proportional to the supplied territory), so the tree tapers
    from hilar to sub-millimetre vessels and bifurcates with realistic asymmetry."""
    segs: list[tuple] = []
    stack = [(root, pts, r0)]
    while stack:
        start, p, r = stack.pop()
        c = p.mean(axis=0)
        if len(p) <= 2 or r < r_min:
            # terminal vessel: reach into the territory and fade out
            end = c if len(p) == 1 else start + 0.9 * (c - start)
            if np.linalg.norm(end - start) > 0.5:
                segs.append((start, end, r, max(0.4, 0.8 * r)))
            continue
        f = rng.uniform(0.45, 0.7)
        end = start + f * (c - start)
        if np.linalg.norm(end - start) < 2.0:
            end = start + (c - start) * min(1.0, 2.0 / max(np.linalg.norm(c - start), 1e-6))
        # a slight taper along the branch; children are sized from the parent's flow (Murray), not
        # from its tapered end, so the taper does not compound over generations
        segs.append((start, end, r, 0.95 * r))
        q = p - c
        w, v = np.linalg.eigh(q.T @ q)
        axis = v[:, -1]
        side = q @ axis > 0
        parts = [p[side], p[~side]]
        if min(len(parts[0]), len(parts[1])) == 0:
            parts = [p[: len(p) // 2], p[len(p) // 2:]]
        for part in parts:
            stack.append((end, part, r * (len(part) / len(p)) ** (1.0 / 3.0)))
    return segs
