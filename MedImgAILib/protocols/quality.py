"""Image-quality measures that need no reference image.

CT
- Noise: the HU standard deviation in small in-plane windows that lie wholly inside a homogeneous
  region, summarised by the mode of the local-SD histogram (the "global noise" idea of Christianson et
  al., AJR 2015: most windows in a homogeneous tissue sit at the noise level; windows across edges form a
  right tail that the mode ignores). Two regions are searched automatically: air outside the body
  (everything dense, couch included, dilated away) and soft tissue (windows whose local mean is
  -30..130 HU inside the eroded body).
- CT number accuracy: the median local mean of the homogeneous air and soft-tissue windows.
- Lung coverage: lung = air-density voxels inside the body outline that belong to a large 3D component;
  the first and last slices must hold no lung piece larger than the trachea (4 cm2).
- Slice spacing regularity from the slice centres; a streak indicator (noisiest slice vs median slice,
  metal volume) and a motion indicator (largest adjacent-slice difference vs median).

MR
- SNR: mean signal in the head mask (Otsu + largest component) over the noise sigma estimated in the
  background; magnitude images have Rayleigh-distributed background, whose median is sigma*sqrt(2 ln 2).
  Parallel imaging and background masking break that model: the result says when the background is
  zero-filled and no estimate is possible.

Every measure returns ``None`` with a reason in ``notes`` when it cannot be computed, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..masks import bbox3d, fill_holes2d
from ..volume import Volume

AIR_HU = -1000.0
#: values at or below this are outside the reconstruction field of view (scanners pad with -2048, -3024)
PADDING_HU = -1500.0
SOFT_TISSUE_WINDOW_HU = (-30.0, 130.0)
TRACHEA_MAX_AREA_MM2 = 400.0
METAL_HU = 2500.0
#: slices examined for noise at most (evenly spaced, about every 3-5 mm in a thin-slice chest): the
#: global mode is stable long before that, and streaks span several slices
MAX_NOISE_SLICES = 100
MIN_WINDOWS = 200


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _window_reduce(mask: np.ndarray, radius: int, axis: int, op: np.ufunc) -> np.ndarray:
    """``op`` (``np.logical_or`` / ``np.logical_and``) of each pixel's centred window of half-width
    ``radius`` along ``axis``, the window clipped at the array's ends. A forward then a backward run of
    length ``radius + 1``, each built by doubling: about 2 log2(radius + 1) elementwise passes over the
    boolean array (numpy, SIMD, and the GIL released), where a box filter needs float conversions."""
    out = np.array(mask, dtype=bool)  # a copy
    n = out.shape[axis]

    def part(lo: int, hi: int) -> tuple[slice, ...]:
        sl = [slice(None)] * out.ndim
        sl[axis] = slice(lo, hi)
        return tuple(sl)

    for forward in (True, False):
        w = 1  # run length covered so far
        while w < radius + 1:
            step = min(w, radius + 1 - w)
            if step >= n:  # the run already spans the whole axis
                break
            # out[i] op= out[i + step] (forward) or out[i - step] (backward); numpy buffers the overlap,
            # so every element combines the previous round's values
            dst, src = (part(0, n - step), part(step, n)) if forward else (part(step, n), part(0, n - step))
            op(out[dst], out[src], out=out[dst])
            w += step
    return out


def dilate2d(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane (last two axes) dilation by a square of half-width ``radius`` (= ``radius`` iterations
    of a 3x3 square; pixels beyond the edge count as the edge pixel)."""
    return _window_reduce(_window_reduce(mask, radius, -2, np.logical_or), radius, -1, np.logical_or)


def erode2d(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane erosion by a square of half-width ``radius`` (pixels beyond the edge count as the edge
    pixel, so a mask touching the edge is not eaten from there)."""
    return _window_reduce(_window_reduce(mask, radius, -2, np.logical_and), radius, -1, np.logical_and)


def open2d(mask: np.ndarray) -> np.ndarray:
    return dilate2d(erode2d(mask, 1), 1)


def component_sizes(lab: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of labels 1..n."""
    return np.bincount(lab.ravel(), minlength=n + 1)[1:]


def _mode(values: np.ndarray) -> float:
    """Mode of a positive sample: histogram on a log scale, lightly smoothed, peak refined by a
    parabola through the three highest bins."""
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return float("nan")
    lv = np.log(v)
    lo, hi = np.percentile(lv, [0.5, 99.5])
    if hi - lo < 1e-6:
        return float(np.exp(np.median(lv)))
    nb = int(np.clip(v.size // 50, 20, 200))
    hist, edges = np.histogram(lv, bins=nb, range=(lo, hi))
    hist = ndi.gaussian_filter1d(hist.astype(float), sigma=max(1.0, nb / 60))
    i = int(np.argmax(hist))
    centre = 0.5 * (edges[:-1] + edges[1:])
    if 0 < i < nb - 1:
        y0, y1, y2 = hist[i - 1], hist[i], hist[i + 1]
        den = y0 - 2 * y1 + y2
        off = 0.5 * (y0 - y2) / den if den != 0 else 0.0
        return float(np.exp(centre[i] + off * (edges[1] - edges[0])))
    return float(np.exp(centre[i]))


def _slice_subset(nk: int, most: int) -> np.ndarray:
    if nk <= most:
        return np.arange(nk)
    return np.unique(np.linspace(0, nk - 1, most).round().astype(int))


def slice_positions_from_volume(volume: Volume) -> np.ndarray:
    """Slice centres along the slice normal (mm): the loader's measured positions when it recorded
    them (``extra['slice_positions_along_normal_mm']``), else what the affine says."""
    for key in ("slice_positions_along_normal_mm", "slice_positions_mm"):  # dicom.load_series records the first
        pos = volume.extra.get(key) if volume.extra else None
        if pos is not None and len(pos) == volume.array.shape[0]:
            return np.asarray(pos, dtype=float)
    nk = volume.array.shape[0]
    return np.arange(nk) * volume.spacing[2]


# --------------------------------------------------------------------------------------------------
# slice spacing
# --------------------------------------------------------------------------------------------------
def slice_spacing_regularity(positions_mm: Sequence[float]) -> dict[str, Any]:
    p = np.sort(np.asarray(positions_mm, dtype=float))
    out: dict[str, Any] = {
        "slice_count": int(p.size),
        "slice_spacing_median_mm": None,
        "slice_spacing_max_deviation_mm": None,
        "slice_spacing_regular": None,
        "slice_gaps": 0,
        "slice_duplicates": 0,
    }
    if p.size < 2:
        return out
    d = np.diff(p)
    med = float(np.median(d))
    dev = float(np.max(np.abs(d - med)))
    tol = max(0.01 * med, 0.05)
    out.update(
        slice_spacing_median_mm=round(med, 4),
        slice_spacing_max_deviation_mm=round(dev, 4),
        slice_spacing_regular=bool(dev <= tol),
        slice_gaps=int(np.sum(d > 1.5 * med)),
        slice_duplicates=int(np.sum(d < 0.01)),
    )
    return out


# --------------------------------------------------------------------------------------------------
# CT
# --------------------------------------------------------------------------------------------------
#: masks are built on a coarse in-plane grid of about this pixel size (block means of the image):
#: outlines and regions need no more, and it keeps a 512 x 512 x 300 series well under a second
COARSE_PIXEL_MM = 2.0
#: noise tiles: about this size, non-overlapping, so neighbouring estimates are independent
TILE_MM = 7.0


#: slab of slices reduced at a time by ``_block_stats``: its rows stay in the CPU cache between the
#: three reductions (about 1 MB of int16 at 512 x 512)
_SLAB_BYTES = 1 << 20


def _reduce_blocks(a: np.ndarray, f: int, op: np.ufunc, dtype: Any = None) -> np.ndarray:
    """[k, J*f, I*f] -> [k, J, I] by ``op`` over each f x f block (remainder rows/columns dropped): first
    the f rows of each block (contiguous rows: fast elementwise passes), then the f columns of the 1/f
    as large result (numpy's reduce over a short strided axis is about ten times slower)."""
    nk, nj, ni = a.shape
    J, I = nj // f, ni // f
    a = a[:, : J * f, : I * f]
    rows = a[:, 0::f, :].astype(dtype or a.dtype)  # a copy, in the result's type
    for d in range(1, f):
        op(rows, a[:, d::f, :], out=rows, casting="unsafe")
    out = rows[:, :, 0::f].copy()
    for d in range(1, f):
        op(out, rows[:, :, d::f], out=out)
    return out


def _block_stats(a: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[k, J*f, I*f] -> block sum, minimum and maximum (a's type), each [k, J, I], over every f x f
    block (remainder rows/columns dropped), in one pass over the volume: ``_reduce_blocks``' order
    (rows, then columns), slab by slab so that the slab stays in the CPU cache for the three
    reductions. Integer input is summed exactly in integers (the rows in a's own type when f values
    cannot overflow it, which spares a mixed-type loop), float input in float64."""
    nk, nj, ni = a.shape
    J, I = nj // f, ni // f
    integer = a.dtype.kind in "iu"
    acc = (np.int64 if a.itemsize >= 4 else np.int32) if integer else np.float64
    if f == 1:
        return a, a, a
    total = np.empty((nk, J, I), dtype=acc)
    if total.size == 0:  # a slice smaller than one block
        return total, np.empty(total.shape, a.dtype), np.empty(total.shape, a.dtype)
    lo = np.empty((nk, J, I), dtype=a.dtype)
    hi = np.empty((nk, J, I), dtype=a.dtype)
    slab = max(1, _SLAB_BYTES // max(1, nj * ni * a.itemsize))
    for k0 in range(0, nk, slab):
        b = a[k0:k0 + slab, : J * f, : I * f]
        r_lo, r_hi = b[:, 0::f, :].copy(), b[:, 0::f, :].copy()
        for d in range(1, f):
            np.minimum(r_lo, b[:, d::f, :], out=r_lo)
            np.maximum(r_hi, b[:, d::f, :], out=r_hi)
        if integer:
            # f values of the slab's range fit the row type? then sum rows in it (no mixed-type loop)
            m = max(abs(int(r_lo.min())), abs(int(r_hi.max())))
            row_t = a.dtype if f * m <= np.iinfo(a.dtype).max else acc
        else:
            row_t = acc
        r_sum = b[:, 0::f, :].astype(row_t)
        for d in range(1, f):
            np.add(r_sum, b[:, d::f, :], out=r_sum, casting="unsafe")
        zs = slice(k0, k0 + b.shape[0])
        t, l, h = total[zs], lo[zs], hi[zs]
        t[...] = r_sum[:, :, 0::f]
        l[...] = r_lo[:, :, 0::f]
        h[...] = r_hi[:, :, 0::f]
        for d in range(1, f):
            np.add(t, r_sum[:, :, d::f], out=t, casting="unsafe")
            np.minimum(l, r_lo[:, :, d::f], out=l)
            np.maximum(h, r_hi[:, :, d::f], out=h)
    return total, lo, hi


@dataclass
class _CTGrid:
    f: int  # image pixels per coarse pixel (each direction)
    coarse_mm: tuple[float, float]  # coarse pixel size (column, row) in mm
    hu: np.ndarray  # coarse block-mean HU [k, J, I]
    valid: np.ndarray  # block wholly inside the reconstruction field of view
    dense_any: np.ndarray  # block holds anything denser than air (body, couch, clothes)
    body_filled: np.ndarray  # body outline with holes (lungs, bowel gas) filled
    block_min: np.ndarray  # coarse block minimum and maximum (the image's type)
    block_max: np.ndarray
    # the slices searched for noise tiles, and on those slices only [len(noise_slices), J, I]:
    noise_slices: np.ndarray
    noise_block_sum: np.ndarray  # block sums (exact for integer images)
    body_core: np.ndarray  # body eroded by 5 mm: where soft-tissue tiles are searched
    air: np.ndarray  # valid air at least 10 mm from anything dense


def _ct_grid(hu: np.ndarray, spacing: tuple[float, float, float]) -> _CTGrid:
    sx, sy, _ = spacing
    f = max(1, int(round(COARSE_PIXEL_MM / max(sx, sy))))
    total, bmin, bmax = _block_stats(hu, f)
    # float32 block means: an integer image's block sums are exact (so its means are the same as from
    # float32 sums); a float image's float64 sums are rounded to float32 first
    coarse = total.astype(np.float32)  # a copy even at f = 1, where total is the image itself
    if f > 1:
        coarse /= np.float32(f * f)
    ks = _slice_subset(hu.shape[0], MAX_NOISE_SLICES)
    noise_sum = total[ks]
    del total
    valid = bmin > PADDING_HU
    dense = bmax > -500.0
    cmm = (sx * f, sy * f)
    # the body: the largest 3D piece of the opened dense mask, holes filled slice by slice; worked out
    # inside the dense mask's bounding box (the couch may span the width, the air above it is skipped)
    filled = np.zeros_like(dense)
    box = bbox3d(dense)
    if box is not None:
        lab, n = ndi.label(open2d(dense[box]), output=np.intp)  # intp: bincount needs no cast
        if n:
            filled[box] = fill_holes2d(lab == (int(np.argmax(component_sizes(lab, n))) + 1))
    # the noise regions are searched on the noise slices only (in-plane operations: slice by slice)
    core = erode2d(filled[ks], max(1, int(math.ceil(5.0 / max(cmm)))))
    vk = valid[ks]
    air = vk & ~dilate2d(dense[ks] | ~vk, max(1, int(math.ceil(10.0 / max(cmm)))))
    return _CTGrid(f=f, coarse_mm=cmm, hu=coarse, valid=valid, dense_any=dense, body_filled=filled,
                   block_min=bmin, block_max=bmax, noise_slices=ks, noise_block_sum=noise_sum,
                   body_core=core, air=air)


def _tile_stats(hu: np.ndarray, grid: _CTGrid, region: np.ndarray,
                mean_range: tuple[float, float]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per noise slice: mean, SD (unbiased) and minimum of the image pixels of every non-overlapping tile
    that lies wholly in ``region`` (coarse grid, on the noise slices) and whose mean is in
    ``mean_range``. A tile is t x t coarse blocks, so its sum and minimum come from the blocks' (exact
    for integer images); only the selected tiles' pixels are read, for the SD (two-pass: deviations
    from the tile mean, squared and summed)."""
    t = max(2, int(round(TILE_MM / max(grid.coarse_mm))))
    t = max(t, int(math.ceil(5 / grid.f)))  # at least 5 x 5 image pixels per tile
    f = grid.f
    _, J, I = region.shape
    Jt, It = J // t, I // t
    if Jt == 0 or It == 0:
        return {}
    side = t * f
    n = side * side
    ks = grid.noise_slices
    acc = np.int64 if grid.noise_block_sum.dtype.kind in "iu" else np.float64
    inside = _reduce_blocks(region, t, np.logical_and)
    means = _reduce_blocks(grid.noise_block_sum, t, np.add, dtype=acc) / n
    sel = inside & (means >= mean_range[0]) & (means <= mean_range[1])
    lows = _reduce_blocks(grid.block_min[ks], t, np.minimum)
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for i in np.flatnonzero(sel.any(axis=(1, 2))):
        k, s = int(ks[i]), sel[i]
        m = means[i][s]
        # the selected tiles [tile, row, column] by integer (row, column) tile indices: a quarter cheaper
        # than a boolean index over the transposed view, same values in the same order
        jj, ii = np.nonzero(s)
        tiles = hu[k, : Jt * side, : It * side].reshape(Jt, side, It, side)[jj, :, ii, :]
        dev = tiles.reshape(tiles.shape[0], n).astype(np.float64)
        dev -= m[:, None]
        out[k] = (m, np.sqrt(np.einsum("ij,ij->i", dev, dev) / (n - 1)), lows[i][s])
    return out


def _cat(per: dict, i: int) -> np.ndarray:
    return np.concatenate([v[i] for v in per.values()]) if per else np.empty(0)


def _ct_noise_and_numbers(hu: np.ndarray, grid: _CTGrid, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "noise_sd_hu": None,
        "noise_soft_tissue_sd_hu": None,
        "noise_air_sd_hu": None,
        "air_hu": None,
        "air_hu_error": None,
        "soft_tissue_hu": None,
        "noise_slice_max_ratio": None,
        "noise_windows_soft_tissue": 0,
        "noise_windows_air": 0,
    }
    air = _tile_stats(hu, grid, grid.air, (-1100.0, -900.0))
    am, asd, amin = _cat(air, 0), _cat(air, 1), _cat(air, 2)
    out["noise_windows_air"] = int(asd.size)
    if asd.size >= MIN_WINDOWS:
        out["air_hu"] = round(float(np.median(am)), 2)
        out["air_hu_error"] = round(out["air_hu"] - AIR_HU, 2)
        # clipping at the bottom of the stored range (often -1024) truncates the air noise: many tiles
        # then share the same minimum
        floor = float(amin.min())
        clipped = float(np.mean(amin <= floor + 1e-3))
        if clipped > 0.2 and asd.size > 20:
            notes.append(f"air values are clipped at {floor:g} HU (in {clipped:.0%} of air tiles): air noise not reported")
        else:
            out["noise_air_sd_hu"] = round(_mode(asd), 3)
    else:
        notes.append(f"too little air outside the body for a noise estimate ({asd.size} tiles)")
    soft = _tile_stats(hu, grid, grid.body_core, SOFT_TISSUE_WINDOW_HU)
    sm, ssd = _cat(soft, 0), _cat(soft, 1)
    out["noise_windows_soft_tissue"] = int(ssd.size)
    # streak indicator: the noisiest slice against the median slice
    slice_modes = [_mode(v[1]) for v in soft.values() if v[1].size >= 30]
    if len(slice_modes) >= 3:
        out["noise_slice_max_ratio"] = round(float(np.max(slice_modes) / np.median(slice_modes)), 3)
    if ssd.size >= MIN_WINDOWS:
        st_sd = _mode(ssd)
        homog = (ssd >= 0.8 * st_sd) & (ssd <= 1.25 * st_sd)
        out["noise_soft_tissue_sd_hu"] = round(st_sd, 3)
        out["soft_tissue_hu"] = round(float(np.median(sm[homog])) if homog.any() else float(np.median(sm)), 2)
    else:
        notes.append(f"too little homogeneous soft tissue for a noise estimate ({ssd.size} tiles)")
    out["noise_sd_hu"] = out["noise_soft_tissue_sd_hu"] if out["noise_soft_tissue_sd_hu"] is not None else out["noise_air_sd_hu"]
    return out


def _lung_coverage(grid: _CTGrid, volume: Volume, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lungs_fully_covered": None,
        "lung_area_first_slice_mm2": None,
        "lung_area_last_slice_mm2": None,
        "lung_volume_ml": None,
    }
    normal = volume.direction[:, 2]
    if abs(normal[2]) < 0.9:
        notes.append("slices are not axial: lung coverage not assessed")
        return out
    px_area = grid.coarse_mm[0] * grid.coarse_mm[1]
    sz = volume.spacing[2]
    candidate = grid.body_filled & (grid.hu < -400.0) & grid.valid
    box = bbox3d(candidate)  # opening and labelling inside the candidates' box: the lungs' own
    lab, n = ndi.label(open2d(candidate[box]), output=np.intp) if box is not None else (None, 0)
    if n == 0:
        out.update(lungs_fully_covered=False, lung_volume_ml=0.0)
        notes.append("no lung found inside the body")
        return out
    voxels = component_sizes(lab, n)
    sizes = voxels * px_area * sz
    keep_ids = np.nonzero(sizes >= max(50_000.0, 0.1 * sizes.max()))[0] + 1
    vol_ml = float(int(voxels[keep_ids - 1].sum()) * px_area * sz / 1000.0)
    out["lung_volume_ml"] = round(vol_ml, 1)
    if vol_ml < 100.0:
        out["lungs_fully_covered"] = False
        notes.append(f"only {vol_ml:.0f} mL of lung found")
        return out

    def lung_area(k: int) -> float:
        """Area of the kept lung pieces in slice k larger than the trachea."""
        if not box[0].start <= k < box[0].stop:
            return 0.0
        l2, m2 = ndi.label(np.isin(lab[k - box[0].start], keep_ids))
        if m2 == 0:
            return 0.0
        areas = component_sizes(l2, m2) * px_area
        return float(areas[areas > TRACHEA_MAX_AREA_MM2].sum())

    first, last = lung_area(0), lung_area(grid.hu.shape[0] - 1)
    out["lung_area_first_slice_mm2"] = round(first, 1)
    out["lung_area_last_slice_mm2"] = round(last, 1)
    out["lungs_fully_covered"] = bool(first == 0.0 and last == 0.0)
    return out


def _interslice_discontinuity(grid: _CTGrid) -> float | None:
    """Largest mean |difference| between adjacent slices inside the body, over the median one, on the
    coarse grid (block means of about 2 mm: noise does not set the floor). What is left is anatomy
    changing along z, smooth in a still patient, and a step where the patient moved."""
    nk = grid.hu.shape[0]
    if nk < 5:
        return None
    sm = np.clip(grid.hu, -1000, 1000)
    if grid.f == 1:
        sm = ndi.uniform_filter(sm, size=(1, 3, 3), mode="nearest")
    union = grid.body_filled[:-1] | grid.body_filled[1:]
    d = []
    for k in range(nk - 1):
        m = union[k]
        if m.sum() < 25:
            d.append(np.nan)
            continue
        d.append(float(np.mean(np.abs(sm[k][m] - sm[k + 1][m]))))
    d = np.asarray(d)
    if np.all(np.isnan(d)):
        return None
    med = np.nanmedian(d)
    return round(float(np.nanmax(d) / med), 3) if med > 0 else None


def _metal_voxels(hu: np.ndarray, grid: _CTGrid) -> int:
    """Voxels above METAL_HU, counted only in the slices where a block maximum (or the few rows and
    columns the blocks leave out) says there are any: most series have none, and then the full volume
    is not read again."""
    nk, J, I = grid.block_max.shape
    f = grid.f
    has = (grid.block_max > METAL_HU).any(axis=(1, 2))
    if hu.shape[1] > J * f:
        has |= (hu[:, J * f:, :] > METAL_HU).any(axis=(1, 2))
    if hu.shape[2] > I * f:
        has |= (hu[:, :, I * f:] > METAL_HU).any(axis=(1, 2))
    ks = np.flatnonzero(has)
    return int(sum(np.count_nonzero(hu[k] > METAL_HU) for k in ks))


def measure_ct(volume: Volume, slice_positions_mm: Sequence[float] | None = None) -> dict[str, Any]:
    hu = volume.array  # HU in whatever dtype the loader chose (int16 when the rescale allows)
    notes: list[str] = []
    grid = _ct_grid(hu, volume.spacing)
    res: dict[str, Any] = {"modality": "CT", "method": "mode of tile SDs in automatically found air and soft-tissue regions"}
    res.update(_ct_noise_and_numbers(hu, grid, notes))
    res.update(_lung_coverage(grid, volume, notes))
    pos = slice_positions_mm if slice_positions_mm is not None else slice_positions_from_volume(volume)
    res.update(slice_spacing_regularity(pos))
    res["metal_volume_mm3"] = round(float(_metal_voxels(hu, grid) * volume.voxel_volume_mm3), 1)
    res["interslice_discontinuity_max_ratio"] = _interslice_discontinuity(grid)
    res["notes"] = notes
    return res


# --------------------------------------------------------------------------------------------------
# MR
# --------------------------------------------------------------------------------------------------
RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))


def measure_mr(volume: Volume, slice_positions_mm: Sequence[float] | None = None) -> dict[str, Any]:
    from skimage.filters import threshold_otsu

    img = np.asarray(volume.array, dtype=np.float32)
    notes: list[str] = []
    res: dict[str, Any] = {
        "modality": "MR",
        "method": "mean signal in head mask / background sigma from the Rayleigh median",
        "snr": None,
        "background_noise_sigma": None,
        "signal_mean": None,
    }
    sub = img[:: max(1, img.shape[0] // 32), ::2, ::2]
    t = float(threshold_otsu(sub)) if np.ptp(sub) > 0 else None
    if t is None:
        notes.append("image is constant: no SNR")
    else:
        fg = img > t
        lab, n = ndi.label(open2d(fg))
        if n == 0:
            notes.append("no foreground found")
        else:
            sizes = component_sizes(lab, n)
            head = lab == (int(np.argmax(sizes)) + 1)
            head = np.stack([ndi.binary_fill_holes(s) for s in head])
            sx = volume.spacing[0]
            margin = max(2, int(round(10.0 / max(sx, 1e-3))))
            near = ndi.uniform_filter(head.astype(np.float32), size=2 * margin + 1, mode="nearest") > 1e-4
            # stay clear of the image border, where reconstruction filters and coil edges misbehave
            border = np.zeros_like(head)
            b = max(2, img.shape[1] // 32)
            border[:, b:-b, b:-b] = True
            bg = ~near & border
            bg_vals = img[bg]
            res["signal_mean"] = round(float(img[head].mean()), 3)
            if bg_vals.size < 1000:
                notes.append(f"too little background ({bg_vals.size} voxels) for a noise estimate")
            elif np.mean(bg_vals == 0) > 0.5:
                notes.append("background is zero-filled (masked by the scanner or by preprocessing): SNR not estimable")
            else:
                nz = bg_vals[bg_vals > 0] if np.mean(bg_vals == 0) > 0 else bg_vals
                sigma = float(np.median(nz)) / RAYLEIGH_MEDIAN
                res["background_noise_sigma"] = round(sigma, 4)
                res["snr"] = round(res["signal_mean"] / sigma, 3) if sigma > 0 else None
    pos = slice_positions_mm if slice_positions_mm is not None else slice_positions_from_volume(volume)
    res.update(slice_spacing_regularity(pos))
    res["notes"] = notes
    return res


def measure_image_quality(
    volume: Volume, modality: str | None = None, slice_positions_mm: Sequence[float] | None = None
) -> dict[str, Any]:
    """All reference-free measures that apply to the volume's modality (``CT`` or ``MR``)."""
    mod = (modality or volume.modality or "").upper()
    if mod == "CT":
        return measure_ct(volume, slice_positions_mm)
    if mod == "MR":
        return measure_mr(volume, slice_positions_mm)
    pos = slice_positions_mm if slice_positions_mm is not None else slice_positions_from_volume(volume)
    res: dict[str, Any] = {"modality": mod or None}
    res.update(slice_spacing_regularity(pos))
    res["notes"] = [f"no image-quality measures for modality {mod or '(unknown)'} beyond slice spacing"]
    return res
