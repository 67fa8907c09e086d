"""Geometry of one lesion mask: axial long/short axis, maximal 3D diameter, volume, centre.

Everything is computed in LPS millimetres through the Volume's affine, so anisotropic voxels and
non-identity directions are handled without assuming axis-aligned spacing.

Conventions (the ones Lung-RADS v2022 and Fleischner 2017 state):
- long axis = the longest diameter of the lesion on the axial image where it is largest, measured on
  the lesion outline (here: the sub-voxel iso-contour at 0.5 of the binary mask, i.e. half-way between
  inside and outside voxel centres), which is the maximal Feret diameter of that outline;
- short axis = the longest chord of the outline perpendicular to the long axis;
- mean diameter = (long + short) / 2;
- maximal 3D diameter = the largest distance between two points of the marching-cubes surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours, marching_cubes


@dataclass
class AxialAxes:
    """Long / short axis of a 2D region; end points in LPS mm."""

    long_mm: float
    short_mm: float
    long_lps: list[list[float]] = field(default_factory=list)
    short_lps: list[list[float]] = field(default_factory=list)

    @property
    def mean_mm(self) -> float:
        return (self.long_mm + self.short_mm) / 2.0


def _hull_points(points: np.ndarray) -> np.ndarray:
    """The points that can be ends of a maximal distance (the convex hull's vertices)."""
    if len(points) <= 3:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # all points on a line or a plane: every point may be an extreme
        return points


def _farthest_pair(points: np.ndarray) -> tuple[float, int, int]:
    """Largest pairwise distance among ``points`` (N, d) and the indices of that pair."""
    n = len(points)
    if n < 2:
        return 0.0, 0, 0
    best, bi, bj = -1.0, 0, 0
    chunk = max(1, 4_000_000 // n)  # keep the distance block around 32 MB
    cols = [np.ascontiguousarray(points[:, c]) for c in range(points.shape[1])]
    for s in range(0, n, chunk):
        # squared distances coordinate by coordinate, summed left to right: the same sums, bit for
        # bit, as ``((a - b) ** 2).sum(-1)`` (numpy adds a short last axis in order), without the
        # (chunk, n, d) difference array
        d2 = (cols[0][s : s + chunk, None] - cols[0][None, :]) ** 2
        for c in cols[1:]:
            d2 += (c[s : s + chunk, None] - c[None, :]) ** 2
        idx = int(np.argmax(d2))
        r, c = divmod(idx, n)
        if d2[r, c] > best:
            best, bi, bj = float(d2[r, c]), s + r, c
    return float(np.sqrt(best)), bi, bj


def slice_contours_lps(
    mask2d: np.ndarray, k: int, affine: np.ndarray, offset_ji: tuple[int, int] = (0, 0)
) -> list[np.ndarray]:
    """Closed sub-voxel outlines (level 0.5) of a 2D mask or occupancy field [j, i] on slice k, as
    (N, 3) LPS arrays; ``offset_ji`` is where the crop starts in the full slice."""
    padded = np.pad(mask2d.astype(np.float32), 1)
    out = []
    for c in find_contours(padded, 0.5):
        rows, cols = c[:, 0] - 1.0 + offset_ji[0], c[:, 1] - 1.0 + offset_ji[1]
        ijk = np.stack([cols, rows, np.full_like(rows, float(k)), np.ones_like(rows)], axis=1)
        out.append((ijk @ affine.T)[:, :3])
    return out


def _longest_perpendicular_chord(
    contours_uv: list[np.ndarray],
) -> tuple[float, float, float, float]:
    """Longest chord along v (perpendicular to u) that lies inside the region bounded by the
    closed polylines ``contours_uv``. Returns (length, u, v_start, v_end).

    Between two consecutive vertex u-values every chord length is linear in u, so the maximum is
    reached at a vertex u: evaluating just beside every vertex is exact, not a sampling."""
    edges = []
    for c in contours_uv:
        if len(c) < 2:
            continue
        closed = c if np.allclose(c[0], c[-1]) else np.vstack([c, c[:1]])
        edges.append(np.stack([closed[:-1], closed[1:]], axis=1))
    if not edges:
        return 0.0, 0.0, 0.0, 0.0
    e = np.concatenate(edges)  # (E, 2 points, 2 coords)
    u1, v1, u2, v2 = e[:, 0, 0], e[:, 0, 1], e[:, 1, 0], e[:, 1, 1]
    keep = u1 != u2  # edges parallel to the chord never cross it transversally
    u1, v1, u2, v2 = u1[keep], v1[keep], u2[keep], v2[keep]
    ulo, uhi = np.minimum(u1, u2), np.maximum(u1, u2)
    vertex_u = np.unique(np.concatenate([u1, u2]))
    scale = max(float(vertex_u.max() - vertex_u.min()), 1e-6)
    eps = 1e-7 * scale
    ts = np.unique(np.concatenate([vertex_u - eps, vertex_u + eps]))
    ts = ts[(ts > vertex_u.min()) & (ts < vertex_u.max())]
    if len(ts) > 4000:  # very large outlines (organs): a dense sampling is enough there
        ts = np.linspace(vertex_u.min() + eps, vertex_u.max() - eps, 4000)
    best = (0.0, 0.0, 0.0, 0.0)
    chunk = max(1, 2_000_000 // max(len(u1), 1))
    for s in range(0, len(ts), chunk):
        t = ts[s : s + chunk, None]
        hit = (ulo[None, :] <= t) & (t < uhi[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            v = v1[None, :] + (t - u1[None, :]) * (v2 - v1)[None, :] / (u2 - u1)[None, :]
        v = np.where(hit, v, np.inf)
        v.sort(axis=1)
        n_hit = hit.sum(axis=1)
        maxpairs = int(n_hit.max() // 2) if len(n_hit) else 0
        for p in range(maxpairs):
            a, b = v[:, 2 * p], v[:, 2 * p + 1]
            valid = (2 * p + 1) < n_hit
            length = np.where(valid, np.where(valid, b, 0.0) - np.where(valid, a, 0.0), -1.0)
            r = int(np.argmax(length))
            if length[r] > best[0]:
                best = (float(length[r]), float(t[r, 0]), float(a[r]), float(b[r]))
    return best


def axial_axes(
    mask2d: np.ndarray, k: int, affine: np.ndarray, offset_ji: tuple[int, int] = (0, 0)
) -> AxialAxes:
    """Long axis (max Feret diameter) and perpendicular short axis of the region on slice k.
    ``mask2d`` is a binary mask or an occupancy field in [0, 1] (outline at 0.5)."""
    ax = axial_axes_if_larger(mask2d, k, affine, offset_ji, None)
    assert ax is not None
    return ax


#: relative margin on "the long axis is shorter than the mean to beat": the short axis is a chord of
#: the same outline, so it is no longer than the long axis up to rounding, far below this
_BOUND_MARGIN = 1e-9


def axial_axes_if_larger(
    mask2d: np.ndarray, k: int, affine: np.ndarray, offset_ji: tuple[int, int], beat_mean_mm: float | None
) -> AxialAxes | None:
    """``axial_axes``, or None as soon as the long axis shows that the mean diameter cannot exceed
    ``beat_mean_mm`` (mean = (long + short) / 2 <= long): the short axis is then not measured."""
    contours = slice_contours_lps(mask2d, k, affine, offset_ji)
    if not contours:
        return AxialAxes(0.0, 0.0)
    pts = np.concatenate(contours)
    hull = _hull_points_in_plane(pts, affine)
    long_mm, a, b = _farthest_pair(hull)
    if beat_mean_mm is not None and long_mm < beat_mean_mm * (1.0 - _BOUND_MARGIN):
        return None
    p0, p1 = hull[a], hull[b]
    e_long = (p1 - p0) / long_mm if long_mm > 0 else affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    normal = _cross3(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    e_perp = _cross3(normal, e_long)
    uv = [np.stack([(c - p0) @ e_long, (c - p0) @ e_perp], axis=1) for c in contours]
    short_mm, u, va, vb = _longest_perpendicular_chord(uv)
    s0 = p0 + u * e_long + va * e_perp
    s1 = p0 + u * e_long + vb * e_perp
    return AxialAxes(long_mm, short_mm, [p0.tolist(), p1.tolist()], [s0.tolist(), s1.tolist()])


def _cross3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` of two 3-vectors (the same products and differences, so the same result bit for
    bit) without its axis handling, which costs ~50x the arithmetic on 3-vectors."""
    a0, a1, a2 = (float(x) for x in a)
    b0, b1, b2 = (float(x) for x in b)
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def _hull_points_in_plane(pts: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convex-hull vertices of coplanar 3D points, computed in the slice plane's 2D frame."""
    ex = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    ey = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    ey = ey - ex * (ey @ ex)
    ey /= np.linalg.norm(ey)
    q = np.stack([(pts - pts[0]) @ ex, (pts - pts[0]) @ ey], axis=1)
    if len(q) <= 3:
        return pts
    try:
        return pts[ConvexHull(q).vertices]
    except QhullError:
        return pts


def max_3d_diameter(mask: np.ndarray, affine: np.ndarray, offset_kji: tuple[int, int, int] = (0, 0, 0)) -> float:
    """Largest distance between two points of the marching-cubes surface (level 0.5) of ``mask``
    [k, j, i]; ``offset_kji`` is where the (cropped) mask starts in the full volume."""
    padded = np.pad(mask.astype(np.float32), 1)
    if padded.sum() == 0:
        return 0.0
    verts, _faces, _n, _v = marching_cubes(padded, 0.5)
    kji = verts - 1.0 + np.asarray(offset_kji, dtype=np.float64)
    ijk1 = np.stack([kji[:, 2], kji[:, 1], kji[:, 0], np.ones(len(kji))], axis=1)
    lps = (ijk1 @ affine.T)[:, :3]
    d, _a, _b = _farthest_pair(_hull_points(lps))
    return d


def centroid_lps(mask: np.ndarray, affine: np.ndarray, offset_kji: tuple[int, int, int] = (0, 0, 0)) -> list[float]:
    """Intensity-unweighted centroid of the mask's voxel centres, in LPS mm."""
    k, j, i = np.nonzero(mask)
    ijk = np.array([i.mean() + offset_kji[2], j.mean() + offset_kji[1], k.mean() + offset_kji[0], 1.0])
    return (affine @ ijk)[:3].tolist()
