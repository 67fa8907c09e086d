"""Slice ordering and grid geometry for a stack of 2D frames.

Order and grid follow what SimpleITK's ImageSeriesReader (GDCM's IPP sorter) produces, so the two agree
on size, origin, spacing and direction: slices sorted by increasing distance along the normal (row x
column cosines), origin = position of the first, slice spacing = (last - first) / (n - 1) along the
normal. What GDCM accepts silently is reported here: uneven spacing (missing slices), duplicate
positions (an error: no grid holds them), gantry tilt / positions off the normal, non-orthogonal
cosines (an error), and SliceThickness or SpacingBetweenSlices that disagree with the positions.

Gantry tilt is the one place where we deliberately differ from SimpleITK: GDCM stacks tilted slices on
an orthogonal grid, which misplaces every slice but the first by up to tan(tilt) x distance. Here the
k axis of the affine follows the real step between slice positions (a sheared affine), so
``Volume.ijk_to_lps`` gives the true position of every voxel, and a warning names the tilt angle.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import GeometryError
from .scan import SliceHeader

#: two slices closer than this along the normal are at "the same position" (mm)
DUPLICATE_TOL_MM = 1e-3
#: relative deviation of one step from the mean step that counts as uneven spacing
UNEVEN_REL_TOL = 0.01
#: absolute cosine of the angle between row and column directions allowed (about 0.06 degree)
ORTHOGONAL_TOL = 1e-3
#: tilt below this (degrees) is rounding noise in positions, not a tilt
TILT_TOL_DEG = 0.01


@dataclass
class StackGeometry:
    order: list[int]  # indices into the input slices, in k order
    affine: np.ndarray  # 4x4 IJK -> LPS
    positions_along_normal_mm: list[float]
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(s[0]), float(s[1]), float(s[2])


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.3g}"


def _fmt_pos(p: Sequence[float]) -> str:
    return "(" + ", ".join(_fmt(float(v)) for v in p) + ")"


def stack_geometry(
    slices: Sequence[SliceHeader],
    series_uid: str,
    *,
    spacing_between_slices: float | None = None,
) -> StackGeometry:
    """Sort ``slices`` along their normal and derive the IJK->LPS affine; warn or raise on problems."""
    if not slices:
        raise GeometryError(f"series {series_uid} has no slices")
    warnings: list[str] = []
    first = slices[0]
    ps = first.pixel_spacing
    if ps is None:
        ps = (1.0, 1.0)
        warnings.append(f"series {series_uid}: no PixelSpacing; 1 mm assumed")
    col_spacing, row_spacing = ps[1], ps[0]  # PixelSpacing is (between rows, between columns)

    have_geom = all(s.orientation is not None and s.position_lps is not None for s in slices)
    if not have_geom:
        return _without_geometry(slices, series_uid, ps, warnings, spacing_between_slices)

    o = np.asarray(first.orientation, dtype=np.float64)
    row, col = o[:3], o[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 1e-6 or nc < 1e-6:
        raise GeometryError(f"series {series_uid}: ImageOrientationPatient has a zero vector {list(o)}")
    dot = float(np.dot(row / nr, col / nc))
    if abs(dot) > ORTHOGONAL_TOL:
        raise GeometryError(
            f"series {series_uid}: ImageOrientationPatient row and column directions are not orthogonal "
            f"(angle {math.degrees(math.acos(max(-1.0, min(1.0, dot)))):.2f} degrees); no regular grid fits"
        )
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)

    pos = np.asarray([s.position_lps for s in slices], dtype=np.float64)
    d = pos @ normal
    order = sorted(range(len(slices)), key=lambda i: (d[i], i))
    d_sorted = d[order]
    pos_sorted = pos[order]
    n = len(slices)

    if n > 1:
        steps = np.diff(d_sorted)
        dup = np.nonzero(steps < DUPLICATE_TOL_MM)[0]
        if dup.size:
            where = ", ".join(_fmt_pos(pos_sorted[i]) for i in dup[:5])
            more = f" and {dup.size - 5} more" if dup.size > 5 else ""
            raise GeometryError(
                f"series {series_uid} has {dup.size} duplicate slice "
                f"position(s) at LPS {where}{more} (normal distance {_fmt(float(d_sorted[dup[0]]))} mm); "
                "it may hold several acquisitions, echoes or phases"
            )
        k_spacing = float(d_sorted[-1] - d_sorted[0]) / (n - 1)
        dev = np.abs(steps - k_spacing)
        if dev.max() > max(UNEVEN_REL_TOL * k_spacing, 1e-3):
            bad = np.nonzero(dev > max(UNEVEN_REL_TOL * k_spacing, 1e-3))[0]
            desc = "; ".join(
                f"{_fmt(float(steps[i]))} mm between {_fmt(float(d_sorted[i]))} and {_fmt(float(d_sorted[i + 1]))}"
                for i in bad[:5]
            )
            warnings.append(
                f"series {series_uid}: uneven slice spacing (missing slices?): mean step "
                f"{_fmt(k_spacing)} mm, steps from {_fmt(float(steps.min()))} to {_fmt(float(steps.max()))} mm "
                f"({desc}); the grid uses the mean step, as SimpleITK does"
            )
        # tilt: positions moving sideways as well as along the normal
        span = pos_sorted[-1] - pos_sorted[0]
        along = float(span @ normal)
        lateral = span - along * normal
        tilt = math.degrees(math.atan2(float(np.linalg.norm(lateral)), abs(along)))
        k_axis = normal * k_spacing
        if tilt > TILT_TOL_DEG:
            k_axis = span / (n - 1)
            warnings.append(
                f"series {series_uid}: slices are tilted {tilt:.2f} degrees from the slice normal (gantry tilt "
                f"or sheared stack); the affine follows the slice positions (sheared), where SimpleITK "
                f"would assume an orthogonal grid"
            )
    else:
        k_spacing = spacing_between_slices or first.slice_thickness or 1.0
        k_axis = normal * k_spacing

    # compare with the typical step (the median), so one gap does not also read as a thickness mismatch
    # (statistics.median: np.median imports numpy.ma on first use, ~80 ms of a 300-slice load)
    step = statistics.median(np.diff(d_sorted).tolist()) if n > 1 else k_spacing
    thick = first.slice_thickness
    if n > 1 and thick is not None and thick > 0 and abs(thick - step) > max(0.01 * step, 1e-3):
        kind = "overlapping" if thick > step else "gapped"
        warnings.append(
            f"series {series_uid}: SliceThickness {_fmt(thick)} mm differs from the {_fmt(step)} mm "
            f"spacing between slice positions ({kind} slices)"
        )
    if n > 1 and spacing_between_slices is not None and abs(spacing_between_slices - step) > max(0.01 * step, 1e-3):
        warnings.append(
            f"series {series_uid}: SpacingBetweenSlices {_fmt(spacing_between_slices)} mm disagrees with the "
            f"{_fmt(step)} mm between slice positions; the positions are used"
        )
    for s in slices[1:]:
        if (
            s.orientation is not None
            and np.max(np.abs(np.asarray(s.orientation) - o)) > 1e-4
        ):  # pragma: no cover - grouping splits these; kept as a guard
            raise GeometryError(f"series {series_uid}: slices have different orientations")

    affine = np.eye(4)
    affine[:3, 0] = row / nr * col_spacing
    affine[:3, 1] = col / nc * row_spacing
    affine[:3, 2] = k_axis
    affine[:3, 3] = pos_sorted[0]
    return StackGeometry(order=order, affine=affine, positions_along_normal_mm=[float(x) for x in d_sorted], warnings=warnings)


def _without_geometry(
    slices: Sequence[SliceHeader],
    series_uid: str,
    ps: Sequence[float],
    warnings: list[str],
    spacing_between_slices: float | None,
) -> StackGeometry:
    """Projection images and secondary captures: no position/orientation. Identity grid at the origin."""
    n = len(slices)
    order = sorted(range(n), key=lambda i: (slices[i].instance_number is None, slices[i].instance_number or 0, i))
    k_spacing = spacing_between_slices or slices[0].slice_thickness or 1.0
    warnings.append(
        f"series {series_uid}: no ImagePositionPatient/ImageOrientationPatient; placed at the origin with an "
        f"identity direction" + (", slices ordered by InstanceNumber" if n > 1 else "")
    )
    affine = np.diag([float(ps[1]), float(ps[0]), float(k_spacing), 1.0])
    return StackGeometry(order=order, affine=affine, positions_along_normal_mm=[k_spacing * i for i in range(n)], warnings=warnings)
