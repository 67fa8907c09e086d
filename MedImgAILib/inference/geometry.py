"""Grids and resampling between the source series and the grid a network sees.

The model grid is axis-aligned in the card's orientation (e.g. LPS), at the card's spacing, and covers
the source's voxel centres. Going back, every output is resampled onto the *source* grid itself (same
shape, same affine), so a label map always lines up with the series it came from, whatever its
orientation (oblique), spacing or size. SimpleITK does the interpolation (LPS, like ``Volume``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..volume import Volume

_AXIS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_direction(code: str) -> np.ndarray:
    """3x3 matrix whose columns are the LPS unit vectors of +i, +j, +k for an orientation code."""
    d = np.zeros((3, 3))
    for col, letter in enumerate(code.upper()):
        axis, sign = _AXIS[letter]
        d[axis, col] = sign
    return d


@dataclass(frozen=True)
class Grid:
    """A regular grid: ``shape_kji`` (array order) and the IJK->LPS ``affine``."""

    shape_kji: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape_kji))

    @classmethod
    def of(cls, volume: Volume) -> "Grid":
        return cls(tuple(volume.array.shape), volume.affine)  # type: ignore[arg-type]


def _corners_lps(grid: Grid) -> np.ndarray:
    nk, nj, ni = grid.shape_kji
    idx = np.array(list(itertools.product([0, ni - 1], [0, nj - 1], [0, nk - 1])), dtype=np.float64)
    return idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def model_grid(source: Grid, orientation: str, target_spacing: Optional[Sequence[float]]) -> Grid:
    """The axis-aligned grid in ``orientation`` covering ``source``'s voxel centres.

    Without a target spacing the source spacing is kept, assigned to the target axis each source axis
    is closest to, so an axial LPS series is reproduced exactly (only permuted/flipped)."""
    direction = orientation_direction(orientation)
    src_spacing = np.linalg.norm(source.affine[:3, :3], axis=0)
    if target_spacing is None:
        src_dir = source.affine[:3, :3] / src_spacing
        # which source axis is closest to each target axis
        match = np.abs(direction.T @ src_dir).argmax(axis=1)
        spacing = src_spacing[match]
    else:
        spacing = np.asarray(target_spacing, dtype=np.float64)
    corners = _corners_lps(source) @ direction  # coordinates along the target axes
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n = np.maximum(np.round((hi - lo) / spacing + 1e-6).astype(int) + 1, 1)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = direction @ lo
    return Grid((int(n[2]), int(n[1]), int(n[0])), affine)


def _sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in affine[:3, 3]))
    img.SetDirection(tuple(float(x) for x in (affine[:3, :3] / spacing).ravel()))
    return img


def _reference(grid: Grid, pixel_id: int) -> sitk.Image:
    ref = sitk.Image(grid.shape_kji[2], grid.shape_kji[1], grid.shape_kji[0], pixel_id)
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetOrigin(tuple(float(o) for o in grid.affine[:3, 3]))
    ref.SetDirection(tuple(float(x) for x in (grid.affine[:3, :3] / spacing).ravel()))
    return ref


def same_grid(a: Grid, b: Grid, tol: float = 1e-4) -> bool:
    return tuple(a.shape_kji) == tuple(b.shape_kji) and np.allclose(a.affine, b.affine, atol=tol)


def resample(array: np.ndarray, src: Grid, dst: Grid, *, interpolation: str = "linear",
             default: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Resample ``array`` (on ``src``) onto ``dst``. ``interpolation``: "linear" (images,
    probabilities) or "nearest" (label maps). Points of ``dst`` outside ``src`` get ``default``."""
    if same_grid(src, dst):
        # a copy: callers normalize the result in place, and the source volume must stay untouched
        return np.array(array, dtype=dtype)
    if array.dtype not in (np.float32, np.float64, np.uint8, np.int16, np.uint16, np.int32):
        array = array.astype(np.float32)
    img = _sitk_image(np.ascontiguousarray(array), src.affine)
    interp = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    out = sitk.Resample(img, _reference(dst, img.GetPixelID()), sitk.Transform(), interp, float(default), img.GetPixelID())
    return sitk.GetArrayFromImage(out).astype(dtype, copy=False)


# --- cropping ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    """Half-open index box in array order [k, j, i]."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def fraction_of(self, shape: Sequence[int]) -> float:
        return float(np.prod(self.shape) / np.prod(shape))


def crop_volume(volume: Volume, box: Box) -> Volume:
    """A view of ``volume`` inside ``box`` with its affine moved to the box's first voxel."""
    k0, j0, i0 = box.lo
    affine = volume.affine.copy()
    affine[:3, 3] = volume.ijk_to_lps([i0, j0, k0])
    return Volume(array=volume.array[box.slices], affine=affine, modality=volume.modality)


def ct_crop_box(volume: Volume, mode: str, *, margin_mm: float = 10.0, body_threshold_hu: float = -500.0,
                lung_threshold_hu: float = -400.0) -> Optional[Box]:
    """Bounding box of the body or of the lungs of a CT, grown by ``margin_mm``; None when nothing
    sensible is found (then the whole volume is used: a crop must never lose anatomy).

    Works on a strided copy (~4 mm in-plane) because the box only needs to be coarse."""
    from scipy import ndimage

    if mode == "none":
        return None
    arr = volume.array
    sp_i, sp_j, sp_k = volume.spacing
    step = (max(1, int(round(3.0 / sp_k))), max(1, int(round(3.0 / sp_j))), max(1, int(round(3.0 / sp_i))))
    small = arr[:: step[0], :: step[1], :: step[2]]
    body = small > body_threshold_hu
    lab, n = ndimage.label(body)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(lab, dtype=np.int32), lab, index=np.arange(1, n + 1))
    body = lab == (int(np.argmax(sizes)) + 1)
    if mode == "lungs":
        # lungs are the holes of each axial body slice that hold air; outside air is not a hole
        filled = np.zeros_like(body)
        for z in range(body.shape[0]):
            filled[z] = ndimage.binary_fill_holes(body[z])
        mask = filled & (small < lung_threshold_hu)
        mask = ndimage.binary_opening(mask)
        if mask.sum() < 0.001 * mask.size:  # no lungs in this field of view: fall back to the body
            mask = body
    else:
        mask = body
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    lo_small, hi_small = idx.min(axis=0), idx.max(axis=0)
    steps = np.asarray(step)
    spacing_kji = np.array([sp_k, sp_j, sp_i])
    margin = np.ceil(margin_mm / spacing_kji).astype(int) + steps  # + one stride of coarse uncertainty
    lo = np.maximum(lo_small * steps - margin, 0)
    hi = np.minimum(hi_small * steps + 1 + margin, np.asarray(arr.shape))
    return Box(tuple(int(x) for x in lo), tuple(int(x) for x in hi))  # type: ignore[arg-type]


# --- intensities -------------------------------------------------------------------------------------
def normalize(array: np.ndarray, mode: str, lower: Optional[float] = None, upper: Optional[float] = None) -> np.ndarray:
    """In place where possible; float32 out."""
    a = np.asarray(array, dtype=np.float32)
    if mode == "window":
        assert lower is not None and upper is not None
        np.clip(a, lower, upper, out=a)
        a -= lower
        a *= 1.0 / (upper - lower)
    elif mode == "zscore":
        fg = a[a > 0] if np.any(a > 0) else a
        mean, std = float(fg.mean()), float(fg.std()) or 1.0
        a -= mean
        a /= std
    return a
