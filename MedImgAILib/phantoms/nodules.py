"""Nodules as exact solids: placement in a lung (seeded), inside tests, and their truth (volume by
analytic formula or a fine grid, axial long/short axes as a reader would measure them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy, Lung
from .spec import NoduleSpec, PhantomSpecError, RandomNodules

DEFAULT_HU = {"solid": 35.0, "ground_glass": -620.0, "part_solid": -600.0}
CORE_HU = 35.0


def _rotation(euler_deg: tuple[float, float, float]) -> np.ndarray:
    a, b, c = np.radians(euler_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass
class Nodule:
    """A placed nodule. ``inside`` takes broadcastable coordinate arrays (LPS mm)."""

    index: int  # 1-based label value
    spec: NoduleSpec
    center: np.ndarray  # (3,)
    lung: Lung
    hu: float
    core_hu: float
    #: ellipsoid semi-axes (sphere: three equal) and rotation (columns = axes in LPS)
    semi_axes: np.ndarray
    rotation: np.ndarray
    #: lobulated: extra spheres (centre, radius) whose union with the core sphere is the nodule
    lobules: list[tuple[np.ndarray, float]] = field(default_factory=list)
    core_radius: float = 0.0

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def bounding_radius(self) -> float:
        r = float(self.semi_axes.max())
        for c, rl in self.lobules:
            r = max(r, float(np.linalg.norm(c - self.center)) + rl)
        return r

    def inside(self, x, y, z) -> np.ndarray:
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        R = self.rotation
        u = (dx * R[0, 0] + dy * R[1, 0] + dz * R[2, 0]) / self.semi_axes[0]
        v = (dx * R[0, 1] + dy * R[1, 1] + dz * R[2, 1]) / self.semi_axes[1]
        w = (dx * R[0, 2] + dy * R[1, 2] + dz * R[2, 2]) / self.semi_axes[2]
        m = u * u + v * v + w * w <= 1.0
        for c, rl in self.lobules:
            m = m | ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= rl * rl)
        if self.spec.juxtapleural:
            m = m & (self.lung.sdf(x, y, z) <= 0.0)
        return m

    def inside_core(self, x, y, z) -> np.ndarray:
        if self.type != "part_solid":
            return np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        r2 = (x - self.center[0]) ** 2 + (y - self.center[1]) ** 2 + (z - self.center[2]) ** 2
        return (r2 <= self.core_radius**2) & self.inside(x, y, z)

    # --- truth ---------------------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """Sphere or ellipsoid entirely in the lung: volume and axes have closed forms."""
        return not self.lobules and not self.spec.juxtapleural

    def truth(self, fine_steps: int = 128) -> dict:
        if self.exact:
            volume = 4.0 / 3.0 * np.pi * float(np.prod(self.semi_axes))
            # the largest axial section of an ellipsoid is the central one; its semi-axes come from
            # the in-plane block of the quadric matrix
            A = self.rotation @ np.diag(1.0 / self.semi_axes**2) @ self.rotation.T
            lam = np.linalg.eigvalsh(A[:2, :2])
            long_ax, short_ax, plane_z = 2.0 / np.sqrt(lam[0]), 2.0 / np.sqrt(lam[1]), float(self.center[2])
            method = "analytic"
            core_vol = 4.0 / 3.0 * np.pi * min(self.core_radius, float(self.semi_axes.min())) ** 3
        else:
            grid = self._fine_measures(fine_steps)
            volume, long_ax, short_ax, plane_z = grid["volume_mm3"], grid["long_axis_mm"], grid["short_axis_mm"], grid["plane_z_mm"]
            method = f"grid {fine_steps}^3"
            core_vol = grid["core_volume_mm3"]
        c = self.center
        part = self.type == "part_solid"
        return {
            "id": self.index,
            "label_value": self.index,
            "type": self.type,
            "shape": "lentiform" if self.spec.perifissural else self.spec.shape,
            "perifissural": bool(self.spec.perifissural),
            "center_lps_mm": [float(v) for v in c],
            "diameter_mm": float(self.spec.diameter_mm),
            "semi_axes_mm": [float(v) for v in self.semi_axes],
            "axes_direction_lps": [[float(v) for v in self.rotation[:, i]] for i in range(3)],
            "lobules": [{"center_lps_mm": [float(v) for v in lc], "radius_mm": float(lr)} for lc, lr in self.lobules],
            "volume_mm3": float(volume),
            "volume_method": method,
            "equivalent_diameter_mm": float((6.0 * volume / np.pi) ** (1.0 / 3.0)),
            "axial_long_axis_mm": float(long_ax),
            "axial_short_axis_mm": float(short_ax),
            "axial_mean_diameter_mm": float(long_ax + short_ax) / 2.0,
            "axial_plane_z_mm": float(plane_z),
            "solid_core_diameter_mm": 2.0 * self.core_radius if part else None,
            "solid_core_volume_mm3": float(core_vol) if part else None,
            "hu": float(self.hu),
            "core_hu": float(self.core_hu) if part else None,
            "juxtapleural": bool(self.spec.juxtapleural),
            "side": self.lung.side,
            "lobe": self.lung.lobe(c),
        }

    def _fine_measures(self, n: int) -> dict:
        """Volume on an n^3 grid over the bounding box, and the axial long/short axes measured on the
        axial plane of largest area (as a reader would pick it), on a finer 2D grid."""
        R = self.bounding_radius + 0.5
        h = 2 * R / n
        ax = (np.arange(n) + 0.5) * h - R
        x = self.center[0] + ax
        y = self.center[1] + ax
        z = self.center[2] + ax
        areas = np.zeros(n)
        core = 0
        step = 16
        for z0 in range(0, n, step):
            zz = z[z0:z0 + step, None, None]
            areas[z0:z0 + step] = self.inside(x[None, None, :], y[None, :, None], zz).sum(axis=(1, 2))
            if self.type == "part_solid":
                core += int(self.inside_core(x[None, None, :], y[None, :, None], zz).sum())
        best = int(np.argmax(areas))
        m2 = 3 * n
        h2 = 2 * R / m2
        ax2 = (np.arange(m2) + 0.5) * h2 - R
        m = self.inside(self.center[0] + ax2[None, :], self.center[1] + ax2[:, None], z[best])
        long_ax, short_ax = _axial_axes(m, self.center[0] + ax2, self.center[1] + ax2, h2)
        return {"volume_mm3": float(areas.sum()) * h**3, "core_volume_mm3": core * h**3, "long_axis_mm": long_ax,
                "short_axis_mm": short_ax, "plane_z_mm": float(z[best])}


def _axial_axes(mask: np.ndarray, x: np.ndarray, y: np.ndarray, h: float) -> tuple[float, float]:
    """Longest in-plane diameter and the longest diameter perpendicular to it (mm)."""
    from scipy import ndimage

    jj, ii = np.nonzero(mask & ~ndimage.binary_erosion(mask))  # the rim holds every hull vertex
    if len(ii) == 0:
        return 0.0, 0.0
    pts = np.stack([x[ii], y[jj]], axis=1)
    # the diameter of a point set lies on its convex hull's vertices; pixel centres measure one pixel
    # short of the true extent, so h is added back
    from scipy.spatial import ConvexHull, QhullError

    try:
        hv = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # degenerate (a line of pixels)
        hv = pts
    d = np.linalg.norm(hv[:, None, :] - hv[None, :, :], axis=2)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    long_ax = float(d[i, j])
    u = (hv[j] - hv[i]) / max(long_ax, 1e-9)
    perp = hv @ np.array([-u[1], u[0]])
    return long_ax + h, float(perp.max() - perp.min()) + h


# --- placement -------------------------------------------------------------------------------------
def place_nodules(anatomy: Anatomy, specs: list[NoduleSpec], random: RandomNodules | None, seed: int) -> list[Nodule]:
    rng = np.random.default_rng([int(seed), 303])
    all_specs = list(specs)
    if random is not None and random.count > 0:
        lo, hi = random.diameter_range_mm
        for _ in range(random.count):
            d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # small nodules are commoner
            u_site = float(rng.random())
            all_specs.append(NoduleSpec(
                type=random.types[rng.integers(len(random.types))],
                diameter_mm=d,
                shape=random.shapes[rng.integers(len(random.shapes))],
                axis_ratios=tuple(float(v) for v in rng.uniform(0.7, 1.4, 3)),
                euler_deg=tuple(float(v) for v in rng.uniform(0, 180, 3)),
                juxtapleural=bool(u_site < random.juxtapleural_fraction),
                perifissural=bool(random.juxtapleural_fraction <= u_site < random.juxtapleural_fraction + random.perifissural_fraction),
            ))
    big_vessels = _big_vessels(anatomy)
    placed: list[Nodule] = []
    for idx, spec in enumerate(all_specs, start=1):
        placed.append(_place_one(idx, spec, anatomy, placed, big_vessels, rng))
    return placed


def _big_vessels(anatomy: Anatomy):
    from .anatomy import CapsuleSet

    v = anatomy.vessels
    keep = np.maximum(v.ra, v.rb) > 2.5
    return CapsuleSet("big", "vessel", v.a[keep], v.b[keep], v.ra[keep], v.rb[keep])


def _shape_params(spec: NoduleSpec):
    r = spec.diameter_mm / 2.0
    if spec.shape == "ellipsoid":
        ratios = np.asarray(spec.axis_ratios, float)
        ratios = ratios / np.prod(ratios) ** (1.0 / 3.0)
        return r * ratios, _rotation(spec.euler_deg)
    return np.array([r, r, r]), np.eye(3)


def _place_one(idx: int, spec: NoduleSpec, anatomy: Anatomy, placed: list[Nodule], big_vessels,
               rng: np.random.Generator) -> Nodule:
    semi, rot = _shape_params(spec)
    r_bound = float(semi.max()) * (1.45 if spec.shape == "lobulated" else 1.0)
    jitter = float(rng.uniform(-25, 25)) if spec.hu is None and spec.type != "solid" else float(rng.uniform(-8, 8))
    hu = spec.hu if spec.hu is not None else DEFAULT_HU[spec.type] + jitter
    core_hu = spec.core_hu if spec.core_hu is not None else CORE_HU + float(rng.uniform(-8, 8))
    core_d = spec.solid_core_diameter_mm if spec.solid_core_diameter_mm is not None else 0.4 * spec.diameter_mm

    if spec.perifissural:
        semi = np.array([1.3, 1.3, 0.6]) * spec.diameter_mm / 2.0
        r_bound = float(semi.max())
    if spec.center_lps_mm is not None:
        c = np.asarray(spec.center_lps_mm, float)
        d = [float(l.sdf(*c)) for l in anatomy.lungs]
        li = int(np.argmin(d))
        if d[li] > 0.0:
            raise PhantomSpecError(
                f"nodule {idx}: centre ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm (LPS) is not inside a lung "
                f"(nearest lung surface {d[li]:.1f} mm away); lungs span z {anatomy.lung_z_range[0]:.0f}"
                f"..{anatomy.lung_z_range[1]:.0f} mm, right lung x<0, left x>0"
            )
        lung = anatomy.lungs[li]
    else:
        lung, c = _random_center(spec, anatomy, placed, big_vessels, r_bound, rng)
    if spec.perifissural:
        rot = _fissure_frame(lung, c)
    lobules: list[tuple[np.ndarray, float]] = []
    if spec.shape == "lobulated" and not spec.perifissural:
        r = semi[0]
        for _ in range(int(rng.integers(4, 7))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            lobules.append((c + u * r * float(rng.uniform(0.55, 0.75)), r * float(rng.uniform(0.42, 0.62))))
    return Nodule(idx, spec, c, lung, float(hu), float(core_hu), semi, rot, lobules, core_radius=core_d / 2.0)


def _random_center(spec, anatomy, placed, big_vessels, r_bound, rng):
    lungs = anatomy.lungs
    if spec.side is not None:
        choices = [l for l in lungs if l.side == spec.side]
    else:
        choices = lungs
    for attempt in range(4000):
        lung = choices[int(rng.integers(len(choices)))] if len(choices) > 1 else choices[0]
        if len(choices) > 1 and lung.side == "left" and rng.random() < 0.1:
            lung = choices[0]  # the right lung is ~10 % larger
        lo = np.array([lung.cx - lung.a, lung.cy - lung.b, lung.z_bottom])
        hi = np.array([lung.cx + lung.a, lung.cy + lung.b, lung.z_apex])
        p = rng.uniform(lo, hi)
        d = float(lung.sdf(*p))
        if spec.perifissural:
            ds = [float(v) for v in lung.fissure_distances(*p)]
            q = int(np.argmin(np.abs(ds)))
            c = p - lung.fissure_normals()[q] * ds[q]
            if not float(lung.sdf(*c)) < -(r_bound + 2.0):
                continue
        elif spec.juxtapleural:
            if not (-3.0 < d < 0.0):
                continue
            # only against the costal pleura (the thoracic wall), not the heart or diaphragm
            dw = float(np.asarray(_wall_sdf(lung, p)))
            if dw < d - 0.5:
                continue
            n = _normal(lung, p)
            if abs(n[2]) > 0.4:  # the costal wall runs craniocaudally; skip apex and recesses
                continue
            c = p - n * (0.3 * spec.diameter_mm + d)  # surface point p - n*d, then inward
            # the distance is first-order only: check the nodule really meets the wall in its own
            # axial plane (as a reader sees it) and that its centre is inside the lung
            if not float(lung.sdf(*c)) < -0.15 * spec.diameter_mm:
                continue
            ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            ring = c[None, :] + 0.5 * spec.diameter_mm * np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], 1)
            if not (lung.sdf(ring[:, 0], ring[:, 1], ring[:, 2]) > 0.5).any():
                continue
        else:
            if d > -(r_bound + 2.0):
                continue
            c = p
        if any(np.linalg.norm(c - q.center) < r_bound + q.bounding_radius + 5.0 for q in placed):
            continue
        if len(big_vessels) and float(big_vessels.min_distance(c).min()) < r_bound + 1.0:
            continue
        return lung, c
    raise PhantomSpecError(
        f"could not place a {spec.diameter_mm:.1f} mm nodule in the lungs after 4000 tries "
        "(too large, or too many nodules for the space left)"
    )


def _fissure_frame(lung: Lung, c: np.ndarray) -> np.ndarray:
    """Rotation whose third column is the normal of the fissure nearest to c."""
    ds = [float(v) for v in lung.fissure_distances(*c)]
    n = lung.fissure_normals()[int(np.argmin(np.abs(ds)))]
    u = np.cross(n, [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(n, u), n], axis=1)


def _wall_sdf(lung: Lung, p):
    from .anatomy import ellipse_sdf

    g = lung.scale(p[2])
    return max(float(ellipse_sdf(p[0] - lung.cx, p[1] - lung.cy, lung.a * g, lung.b * g)),
               float(ellipse_sdf(p[0], p[1], lung.thorax_a, lung.thorax_b)))


def _normal(lung: Lung, p: np.ndarray, h: float = 0.5) -> np.ndarray:
    g = np.array([(lung.sdf(*(p + e)) - lung.sdf(*(p - e))) / (2 * h) for e in np.eye(3) * h], dtype=float)
    return g / max(np.linalg.norm(g), 1e-9)
