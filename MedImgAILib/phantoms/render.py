"""Rendering the analytic chest on a CT reconstruction grid.

Each reconstructed slice is the average of the object over its slice profile (a box of the slice
thickness) and over each pixel's area:
  * large structures (body, bones of the spine, lungs, heart, liver) are sampled at ceil(T/1.25 mm)
    positions through the slice and get a linear partial-volume ramp across each pixel;
  * tubes (vessels, ribs, airways) at ceil(T/0.3 mm) positions, with the same in-plane ramp;
  * nodules by true supersampling (a 4x4 sub-pixel grid, ceil(T/0.25 mm) positions), which is also
    their truth label (occupancy >= 0.5).
Objects are painted in order, each blending its HU in with its occupancy. Then the reconstruction
kernel (in-plane Gaussian PSF plus optional unsharp-mask edge enhancement) and noise (Gaussian,
in-plane correlated, scaled to the requested SD exactly) are applied slice by slice.

Work goes in chunks of slices and every object is evaluated only inside its bounding box, so memory
stays at a few chunks and a 512x512x300 series renders in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, CapsuleSet, Extruded, material_hu
from .nodules import Nodule
from .spec import AcquisitionSpec

NODULE_SS = 4  # in-plane sub-pixels per axis for nodules


@dataclass
class Grid:
    ni: int
    nj: int
    nk: int
    dx: float  # pixel spacing (mm), square pixels
    dz: float  # reconstruction interval
    thickness: float
    x0: float  # centre of pixel (i=0)
    y0: float
    z0: float  # centre of slice k=0 (most inferior)
    #: per slice, where the anatomy is sampled relative to the slice (breathing motion), mm; None = 0
    shift: np.ndarray | None = None

    @property
    def motion_margin(self) -> float:
        return 0.0 if self.shift is None else float(np.abs(self.shift).max())

    def shift_of(self, k: np.ndarray | int) -> np.ndarray | float:
        return 0.0 if self.shift is None else self.shift[k]

    @property
    def x(self) -> np.ndarray:
        return self.x0 + self.dx * np.arange(self.ni)

    @property
    def y(self) -> np.ndarray:
        return self.y0 + self.dx * np.arange(self.nj)

    @property
    def z(self) -> np.ndarray:
        return self.z0 + self.dz * np.arange(self.nk)

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([self.dx, self.dx, self.dz, 1.0])
        a[:3, 3] = (self.x0, self.y0, self.z0)
        return a

    def sub_z(self, k0: int, k1: int, nsub: int) -> np.ndarray:
        """Sample positions through each slice's profile, shape (k1-k0, nsub)."""
        off = self.thickness * ((np.arange(nsub) + 0.5) / nsub - 0.5)
        zk = self.z0 + self.dz * np.arange(k0, k1)
        if self.shift is not None:
            zk = zk + self.shift[k0:k1]
        return zk[:, None] + off[None, :]

    def i_range(self, lo: float, hi: float) -> tuple[int, int]:
        return max(0, int(math.floor((lo - self.x0) / self.dx))), min(self.ni, int(math.ceil((hi - self.x0) / self.dx)) + 1)

    def j_range(self, lo: float, hi: float) -> tuple[int, int]:
        return max(0, int(math.floor((lo - self.y0) / self.dx))), min(self.nj, int(math.ceil((hi - self.y0) / self.dx)) + 1)

    def k_range(self, lo: float, hi: float) -> tuple[int, int]:
        """Slices whose profile [z - T/2, z + T/2] meets [lo, hi]."""
        h = self.thickness / 2.0 + self.motion_margin
        return (max(0, int(math.ceil((lo - h - self.z0) / self.dz - 1e-9))),
                min(self.nk, int(math.floor((hi + h - self.z0) / self.dz + 1e-9)) + 1))


def make_grid(acq: AcquisitionSpec, lung_z: tuple[float, float]) -> Grid:
    dx = acq.spacing_mm
    n = acq.matrix
    dz = acq.interval_mm
    T = acq.slice_thickness_mm
    if acq.slices is not None:
        nk = acq.slices
    else:
        span = (lung_z[1] - lung_z[0]) + 2 * acq.z_margin_mm
        nk = max(1, int(math.ceil(span / dz)) + 1)
    if acq.z_start_mm is not None:
        z0 = float(acq.z_start_mm)
    else:
        mid = (lung_z[0] + lung_z[1]) / 2.0
        z0 = round((mid - dz * (nk - 1) / 2.0) * 4.0) / 4.0  # tidy header positions (0.25 mm steps)
    cx, cy = acq.center_xy_mm
    x0 = cx - dx * (n - 1) / 2.0
    y0 = cy - dx * (n - 1) / 2.0
    shift = None
    if acq.breathing_motion_mm > 0:
        # the patient breathes while the table moves: each slice samples the anatomy displaced
        # craniocaudally by a sinusoid of the table position (rigid, a deliberate simplification)
        zk = dz * np.arange(nk)
        shift = acq.breathing_motion_mm * np.sin(2 * np.pi * zk / acq.breathing_period_mm + acq.breathing_phase)
    return Grid(n, n, nk, dx, dz, T, x0, y0, z0, shift)


_BUCKETS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096])


def _bucket(n: np.ndarray) -> np.ndarray:
    return _BUCKETS[np.searchsorted(_BUCKETS, n)]


def _ramp(d: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume occupancy of a pixel of size h at signed distance d from a smooth surface."""
    return np.clip(0.5 - d / h, 0.0, 1.0)


class Renderer:
    def __init__(self, anatomy: Anatomy, nodules: list[Nodule], acq: AcquisitionSpec, grid: Grid,
                 fissures: bool = True):
        self.anatomy = anatomy
        self.fissures = fissures
        self.nodules = nodules
        self.acq = acq
        self.grid = grid
        self.hu = material_hu(acq.kvp, acq.contrast)
        T = grid.thickness
        self.nsub_big = max(1, int(math.ceil(T / 1.25 - 1e-9)))
        self.nsub_small = max(2, int(math.ceil(T / 0.45 - 1e-9)))
        self.nsub_nodule = max(2, int(math.ceil(T / 0.25 - 1e-9)))
        self._static_cache: dict[tuple, np.ndarray] = {}
        self._ext_occ: dict[int, tuple[slice, slice, np.ndarray]] = {}
        for idx, e in enumerate(anatomy.extruded):
            self._ext_occ[idx] = self._extruded_occ(e)
        self.caps_pre = [self._prep_caps(c) for c in anatomy.capsules_pre]
        self.vessels = self._prep_caps(anatomy.vessels)

    # --- big anatomy ------------------------------------------------------------------------------
    def _extruded_occ(self, e: Extruded):
        g = self.grid
        h = g.dx
        i0, i1 = g.i_range(e.cx - e.a - h, e.cx + e.a + h)
        j0, j1 = g.j_range(e.cy - e.b - h, e.cy + e.b + h)
        if i1 <= i0 or j1 <= j0:
            return None
        occ = _ramp(e.sdf2d(g.x[None, i0:i1], g.y[j0:j1, None]), h).astype(np.float32)
        return (slice(j0, j1), slice(i0, i1), occ)

    def _static(self, z: float) -> np.ndarray:
        active = tuple(i for i, e in enumerate(self.anatomy.extruded) if e.z0 <= z < e.z1 and self._ext_occ[i] is not None)
        img = self._static_cache.get(active)
        if img is None:
            img = np.full((self.grid.nj, self.grid.ni), self.hu["air"], dtype=np.float32)
            for i in active:
                sj, si, occ = self._ext_occ[i]
                v = img[sj, si]
                v += (self.hu[self.anatomy.extruded[i].material] - v) * occ
            if len(self._static_cache) > 64:
                self._static_cache.clear()
            self._static_cache[active] = img
        return img

    def big_slice(self, z: float) -> np.ndarray:
        g = self.grid
        h = g.dx
        img = self._static(z).copy()
        # liver under the right hemidiaphragm
        lv = self.anatomy.liver_side
        zl_top = lv.z_dome
        if z < zl_top + 2:
            i0, i1 = g.i_range(lv.cx - 1.3 * lv.a, lv.cx + 1.3 * lv.a)
            j0, j1 = g.j_range(lv.cy - 1.2 * lv.b, lv.cy + 1.2 * lv.b)
            if i1 > i0 and j1 > j0:
                x, y = g.x[None, i0:i1], g.y[j0:j1, None]
                from .anatomy import ellipse_sdf

                zd, _ = lv.z_diaphragm(x, y)
                d = np.maximum(ellipse_sdf(x - lv.cx * 0.75, y - lv.cy, 1.3 * lv.a, 1.05 * lv.b), z - zd + 3.0)
                d = np.maximum(d, ellipse_sdf(x, y, lv.thorax_a, lv.thorax_b))
                occ = _ramp(d, h)
                v = img[j0:j1, i0:i1]
                v += (self.hu["liver"] - v) * occ
        for lung in self.anatomy.lungs:
            b = lung.bounds_xy(z)
            if b is None:
                continue
            i0, i1 = g.i_range(b[0] - h, b[1] + h)
            j0, j1 = g.j_range(b[2] - h, b[3] + h)
            if i1 <= i0 or j1 <= j0:
                continue
            x, y = g.x[None, i0:i1], g.y[j0:j1, None]
            occ = _ramp(lung.sdf(x, y, z), h)
            v = img[j0:j1, i0:i1]
            v += (lung.hu(y, x, z) - v) * occ
            if self.fissures:
                self._paint_fissures(v, lung, x, y, z, occ)
        for ell in self.anatomy.heart_layers:
            sec = ell.section(z)
            if sec is None:
                continue
            cx, cy, _ = ell.center
            i0, i1 = g.i_range(cx - sec[0] - h, cx + sec[0] + h)
            j0, j1 = g.j_range(cy - sec[1] - h, cy + sec[1] + h)
            if i1 <= i0 or j1 <= j0:
                continue
            from .anatomy import ellipse_sdf

            occ = _ramp(ellipse_sdf(g.x[None, i0:i1] - cx, g.y[j0:j1, None] - cy, sec[0], sec[1]), h)
            v = img[j0:j1, i0:i1]
            v += (self.hu[ell.material] - v) * occ
        return img

    def _paint_fissures(self, v, lung, x, y, z, lung_occ) -> None:
        """A fissure is a pleural sheet ~0.3 mm thick: far thinner than a voxel, so each voxel gets
        the sheet's area fraction (a tent of width w, the voxel's footprint along the sheet normal)."""
        g = self.grid
        t_sub = g.thickness / self.nsub_big
        for d, n in zip(lung.fissure_distances(x, y, z), lung.fissure_normals()):
            w = g.dx * (abs(n[0]) + abs(n[1])) + t_sub * abs(n[2])
            cover = (lung.fissure_mm / w) * np.clip(1.0 - np.abs(d) / w, 0.0, 1.0) * lung_occ
            v += (self.hu["soft_tissue"] - v) * cover.astype(np.float32)

    # --- capsules ---------------------------------------------------------------------------------
    def _prep_caps(self, cs: CapsuleSet):
        pcs = cs.pieces()
        rmax = np.maximum(pcs.ra, pcs.rb) + self.grid.dx
        lo = np.minimum(pcs.a, pcs.b) - rmax[:, None]
        hi = np.maximum(pcs.a, pcs.b) + rmax[:, None]
        return pcs, lo, hi

    def _paint_caps(self, buf: np.ndarray, k0: int, k1: int, prepared, hu: float) -> None:
        """Paint one capsule set over slices [k0, k1). Pieces are evaluated in batches of equal box
        size (numpy per-call overhead would otherwise dominate: thousands of tiny boxes), then merged
        by maximum occupancy and blended in once."""
        pcs, lo, hi = prepared
        if len(pcs) == 0:
            return
        g = self.grid
        h2 = g.thickness / 2 + g.motion_margin
        zlo = g.z0 + g.dz * k0 - h2
        zhi = g.z0 + g.dz * (k1 - 1) + h2
        xs_hi = g.x0 + g.dx * (g.ni - 1)
        ys_hi = g.y0 + g.dx * (g.nj - 1)
        sel = np.nonzero((lo[:, 2] <= zhi) & (hi[:, 2] >= zlo) & (lo[:, 0] <= xs_hi) & (hi[:, 0] >= g.x0)
                         & (lo[:, 1] <= ys_hi) & (hi[:, 1] >= g.y0))[0]
        if len(sel) == 0:
            return
        lo_s, hi_s = lo[sel], hi[sel]
        ka = np.maximum(k0, np.ceil((lo_s[:, 2] - h2 - g.z0) / g.dz - 1e-9).astype(int))
        kb = np.minimum(k1, np.floor((hi_s[:, 2] + h2 - g.z0) / g.dz + 1e-9).astype(int) + 1)
        i0 = np.maximum(0, np.floor((lo_s[:, 0] - g.x0) / g.dx).astype(int))
        i1 = np.minimum(g.ni, np.ceil((hi_s[:, 0] - g.x0) / g.dx).astype(int) + 1)
        j0 = np.maximum(0, np.floor((lo_s[:, 1] - g.y0) / g.dx).astype(int))
        j1 = np.minimum(g.nj, np.ceil((hi_s[:, 1] - g.y0) / g.dx).astype(int) + 1)
        ok = (kb > ka) & (i1 > i0) & (j1 > j0)
        if not ok.any():
            return
        sel, ka, kb, i0, i1, j0, j1 = sel[ok], ka[ok], kb[ok], i0[ok], i1[ok], j0[ok], j1[ok]
        # bucket box sizes (<= 1.5x padding per axis); a padded box is shifted to stay in the grid
        # and simply evaluates the capsule at a few more voxels, which is harmless
        dk = np.minimum(_bucket(kb - ka), k1 - k0)
        dj = np.minimum(_bucket(j1 - j0), g.nj)
        di = np.minimum(_bucket(i1 - i0), g.ni)
        ka = np.minimum(ka, k1 - dk)
        j0 = np.minimum(j0, g.nj - dj)
        i0 = np.minimum(i0, g.ni - di)
        occ = np.zeros(buf.shape, dtype=np.float32)
        flat = occ.reshape(-1)
        ns = self.nsub_small
        off = g.thickness * ((np.arange(ns) + 0.5) / ns - 0.5)
        keys = dk * 1_000_000 + dj * 1000 + di
        for key in np.unique(keys):
            members = np.nonzero(keys == key)[0]
            bk, bj, bi = int(dk[members[0]]), int(dj[members[0]]), int(di[members[0]])
            per = bk * ns * bj * bi
            step = max(1, 3_000_000 // per)
            for b0 in range(0, len(members), step):
                m = members[b0:b0 + step]
                n = sel[m]
                a = pcs.a[n]
                ba = pcs.b[n] - a
                bb = np.maximum(np.einsum("ij,ij->i", ba, ba), 1e-12)
                kk = ka[m][:, None] + np.arange(bk)[None, :]  # (P, bk)
                zz = (g.z0 + g.dz * kk + g.shift_of(kk))[:, :, None] + off[None, None, :]  # (P, bk, ns)
                jj = j0[m][:, None] + np.arange(bj)[None, :]
                ii = i0[m][:, None] + np.arange(bi)[None, :]
                px = (g.x0 + g.dx * ii - a[:, 0:1])[:, None, None, :].astype(np.float32)
                py = (g.y0 + g.dx * jj - a[:, 1:2])[:, None, :, None].astype(np.float32)
                pz = (zz.reshape(len(m), bk * ns) - a[:, 2:3])[:, :, None, None].astype(np.float32)
                bx, by, bz = (ba[:, q].astype(np.float32)[:, None, None, None] for q in range(3))
                t = (px * bx + py * by + pz * bz) / bb.astype(np.float32)[:, None, None, None]
                np.clip(t, 0.0, 1.0, out=t)
                dist = np.sqrt((px - t * bx) ** 2 + (py - t * by) ** 2 + (pz - t * bz) ** 2)
                ra = pcs.ra[n].astype(np.float32)[:, None, None, None]
                rb = pcs.rb[n].astype(np.float32)[:, None, None, None]
                d = dist - (ra + (rb - ra) * t)
                o = _ramp(d, g.dx).reshape(len(m), bk, ns, bj, bi).mean(axis=2)
                idx = (((kk - k0)[:, :, None, None] * g.nj + jj[:, None, :, None]) * g.ni + ii[:, None, None, :])
                nz = o > 0
                np.maximum.at(flat, idx[nz], o[nz])
        kmin, kmax = int(ka.min()) - k0, int((ka + dk).max()) - k0
        jmin, jmax = int(j0.min()), int((j0 + dj).max())
        imin, imax = int(i0.min()), int((i0 + di).max())
        s = (slice(kmin, kmax), slice(jmin, jmax), slice(imin, imax))
        v = buf[s]
        v += (hu - v) * occ[s]

    # --- nodules ----------------------------------------------------------------------------------
    def _nodule_occ(self, nod: Nodule, k0: int, k1: int, core: bool):
        g = self.grid
        r = nod.bounding_radius + g.dx
        c = nod.center
        ka, kb = g.k_range(c[2] - r, c[2] + r)
        ka, kb = max(ka, k0), min(kb, k1)
        i0, i1 = g.i_range(c[0] - r, c[0] + r)
        j0, j1 = g.j_range(c[1] - r, c[1] + r)
        if kb <= ka or i1 <= i0 or j1 <= j0:
            return None
        s = NODULE_SS
        off = ((np.arange(s) + 0.5) / s - 0.5) * g.dx
        xs = (g.x[i0:i1, None] + off[None, :]).reshape(-1)
        ys = (g.y[j0:j1, None] + off[None, :]).reshape(-1)
        ns = self.nsub_nodule
        zs = g.sub_z(ka, kb, ns).reshape(-1)
        fn = nod.inside_core if core else nod.inside
        occ = np.empty((kb - ka, j1 - j0, i1 - i0), dtype=np.float32)
        for q in range(kb - ka):  # slice by slice keeps the supersampled block small
            m = fn(xs[None, None, :], ys[None, :, None], zs[q * ns:(q + 1) * ns, None, None])
            occ[q] = m.reshape(ns, j1 - j0, s, i1 - i0, s).mean(axis=(0, 2, 4))
        return (slice(ka - k0, kb - k0), slice(j0, j1), slice(i0, i1)), occ

    def _paint_nodule(self, buf, labels, k0, k1, nod: Nodule, core: bool):
        res = self._nodule_occ(nod, k0, k1, core)
        if res is None:
            return
        s, occ = res
        v = buf[s]
        v += ((nod.core_hu if core else nod.hu) - v) * occ
        if labels is not None and not core:
            lab = labels[s]
            lab[occ >= 0.5] = nod.index

    # --- the chunk pipeline -----------------------------------------------------------------------
    def render_chunk(self, k0: int, k1: int, labels: np.ndarray | None = None) -> np.ndarray:
        """Noise-free, unblurred HU of slices [k0, k1) (the 'ideal' image); labels filled in place
        (slice-relative array of shape (k1-k0, nj, ni))."""
        g = self.grid
        buf = np.empty((k1 - k0, g.nj, g.ni), dtype=np.float32)
        subs = g.sub_z(k0, k1, self.nsub_big)
        for q in range(k1 - k0):
            acc = self.big_slice(float(subs[q, 0]))
            for z in subs[q, 1:]:
                acc = acc + self.big_slice(float(z))
            buf[q] = acc / self.nsub_big if self.nsub_big > 1 else acc
        for prepared, cs in zip(self.caps_pre, self.anatomy.capsules_pre):
            self._paint_caps(buf, k0, k1, prepared, self.hu[cs.material])
        # ground-glass opacities are painted under the vessels (vessels run through them) ...
        for nod in self.nodules:
            if nod.type in ("ground_glass", "part_solid"):
                self._paint_nodule(buf, labels, k0, k1, nod, core=False)
        self._paint_caps(buf, k0, k1, self.vessels, self.hu["vessel"])
        # ... solid tissue over them
        for nod in self.nodules:
            if nod.type == "solid":
                self._paint_nodule(buf, labels, k0, k1, nod, core=False)
            elif nod.type == "part_solid":
                self._paint_nodule(buf, None, k0, k1, nod, core=True)
        return buf


# --- reconstruction kernel and noise ----------------------------------------------------------------
def apply_kernel(buf: np.ndarray, acq: AcquisitionSpec, dx: float) -> np.ndarray:
    """In-plane PSF (Gaussian) and edge enhancement (unsharp mask): CT kernels act within the slice."""
    sig = acq.blur_sigma / dx
    if sig > 0.05:
        buf = ndimage.gaussian_filter(buf, sigma=(0, sig, sig), mode="nearest", truncate=3.5)
    gain = acq.edge_gain
    if gain > 0:
        low = ndimage.gaussian_filter(buf, sigma=(0, 1.0 / dx, 1.0 / dx), mode="nearest", truncate=3.5)
        buf = buf + gain * (buf - low)
    return buf


def kernel_noise_gain(acq: AcquisitionSpec, dx: float) -> float:
    """L2 norm of the kernel's impulse response: white noise of SD s filtered by the kernel has SD
    s * norm, so noise added before the kernel is scaled by 1/norm to come out at the requested SD."""
    reach = 4.0 * max(acq.blur_sigma, 1.0 if acq.edge_gain > 0 else 0.0) / dx
    n = 2 * int(math.ceil(reach)) + 9
    imp = np.zeros((1, n, n), dtype=np.float64)
    imp[0, n // 2, n // 2] = 1.0
    resp = apply_kernel(imp, acq, dx)
    return float(np.sqrt((resp * resp).sum()))


def _gauss_gain(sig_px: float) -> float:
    """1 / (L2 norm of the 2D Gaussian filter) so filtered unit white noise has unit SD."""
    if sig_px <= 0.05:
        return 1.0
    delta = np.zeros(int(8 * sig_px) * 2 + 1)
    delta[len(delta) // 2] = 1.0
    w = ndimage.gaussian_filter1d(delta, sig_px, mode="constant", truncate=3.5)
    return float(1.0 / (w @ w))  # 2D separable: sum(w2d^2) = (sum w^2)^2, sqrt -> sum w^2


def _white(shape: tuple[int, int], seed: int, series: int, k: int) -> np.ndarray:
    # one stream per slice: the noise of slice k does not depend on chunking or on other slices
    return np.random.default_rng([int(seed), 404, int(series), int(k)]).standard_normal(shape, dtype=np.float32)


def iter_slices(renderer: Renderer, seed: int, series: int, chunk: int = 16,
                labels: np.ndarray | None = None, workers: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(k, HU slice as float32, rounded to integers) in increasing k; labels filled as a side effect.

    Noise: by default it is white noise passed through the same kernel as the image (so a sharp
    kernel gives fine-grained noise with edge-enhanced texture, a soft one blotchy noise), scaled so
    that its SD is exactly the requested one. With an explicit ``noise_correlation_mm`` it is white
    noise smoothed by a Gaussian of that sigma instead, added after the kernel."""
    g = renderer.grid
    acq = renderer.acq
    sd = acq.noise_sd
    through_kernel = acq.noise_correlation_mm is None
    if through_kernel:
        scale = sd / kernel_noise_gain(acq, g.dx)
    else:
        sig = acq.noise_corr / g.dx
        scale = sd * _gauss_gain(sig)

    def one_chunk(k0: int) -> np.ndarray:
        k1 = min(g.nk, k0 + chunk)
        lab = labels[k0:k1] if labels is not None else None
        buf = renderer.render_chunk(k0, k1, lab)
        if sd > 0 and through_kernel:
            for q in range(k1 - k0):
                buf[q] += scale * _white(buf.shape[1:], seed, series, k0 + q)
        buf = apply_kernel(buf, acq, g.dx)
        if sd > 0 and not through_kernel:
            for q in range(k1 - k0):
                n = _white(buf.shape[1:], seed, series, k0 + q)
                if sig > 0.05:
                    n = ndimage.gaussian_filter(n, sigma=sig, mode="wrap", truncate=3.5)
                buf[q] += scale * n
        np.rint(buf, out=buf)
        return buf

    starts = list(range(0, g.nk, chunk))
    if workers <= 1 or len(starts) < 2:
        for k0 in starts:
            buf = one_chunk(k0)
            for q in range(buf.shape[0]):
                yield k0 + q, buf[q]
        return
    # chunks are independent (each slice's noise has its own stream, labels are disjoint slabs) and
    # numpy/scipy release the GIL in their loops, so threads overlap; at most workers+1 chunks in flight
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(one_chunk, k0) for k0 in starts[: workers + 1]]
        nxt = workers + 1
        for k0 in starts:
            buf = pending.pop(0).result()
            if nxt < len(starts):
                pending.append(pool.submit(one_chunk, starts[nxt]))
                nxt += 1
            for q in range(buf.shape[0]):
                yield k0 + q, buf[q]
