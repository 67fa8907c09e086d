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
def _window_px(pixel_mm: float, target_mm: float = 7.0) -> int:
    w = int(round(target_mm / max(pixel_mm, 1e-3)))
    w = max(5, min(w, 15))
    return w if w % 2 else w + 1


def _local_stats(slab: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """In-plane local mean and (unbiased) SD in a w x w window, slice by slice."""
    x = slab.astype(np.float64)
    size = (1, w, w)
    m = ndi.uniform_filter(x, size=size, mode="nearest")
    m2 = ndi.uniform_filter(x * x, size=size, mode="nearest")
    n = w * w
    var = np.clip(m2 - m * m, 0.0, None) * (n / (n - 1))
    return m, np.sqrt(var)


def _box(mask: np.ndarray, radius: int) -> np.ndarray:
    """Fraction of each in-plane (2r+1)^2 square that is set (separable, so fast at any radius)."""
    return ndi.uniform_filter(mask.astype(np.float32), size=(1, 2 * radius + 1, 2 * radius + 1), mode="nearest")


def dilate2d(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane dilation by a square of half-width ``radius`` (= ``radius`` iterations of a 3x3 square)."""
    return _box(mask, radius) > 1e-4


def erode2d(mask: np.ndarray, radius: int) -> np.ndarray:
    return _box(mask, radius) > 1 - 1e-4


def open2d(mask: np.ndarray) -> np.ndarray:
    return dilate2d(erode2d(mask, 1), 1)


def component_sizes(lab: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of labels 1..n."""
    return np.bincount(lab.ravel(), minlength=n + 1)[1:]


def _inside(mask: np.ndarray, w: int) -> np.ndarray:
    """Centres of the w x w in-plane windows that lie wholly inside ``mask``."""
    return ndi.uniform_filter(mask.astype(np.float32), size=(1, w, w), mode="constant") > 0.999


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
@dataclass
class _CTMasks:
    body_filled: np.ndarray  # body outline with holes (lungs, bowel gas) filled
    dense_any: np.ndarray  # everything denser than air (body, couch, clothes)
    valid: np.ndarray  # inside the reconstruction field of view
    body_core: np.ndarray  # body eroded by 5 mm: where soft-tissue windows are searched


def _ct_masks(hu: np.ndarray, pixel_mm: float) -> _CTMasks:
    valid = hu > PADDING_HU
    dense = hu > -500.0
    lab, n = ndi.label(open2d(dense))
    if n == 0:
        body = np.zeros_like(dense)
    else:
        body = lab == (int(np.argmax(component_sizes(lab, n))) + 1)
    filled = np.empty_like(body)
    for k in range(body.shape[0]):
        filled[k] = ndi.binary_fill_holes(body[k])
    core = erode2d(filled, max(1, int(round(5.0 / pixel_mm))))
    return _CTMasks(body_filled=filled, dense_any=dense, valid=valid, body_core=core)


def _windows_per_slice(
    hu: np.ndarray, region: np.ndarray, w: int, ks: np.ndarray, mean_range: tuple[float, float] | None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per slice k in ``ks``: local means and SDs of the windows wholly inside ``region``."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    step = max(1, w // 2)  # windows overlap; a stride of w/2 keeps them nearly independent and cheap
    for k in ks:
        reg = region[k : k + 1]
        if not reg.any():
            continue
        inside = _inside(reg, w)
        if not inside.any():
            continue
        m, s = _local_stats(hu[k : k + 1], w)
        sel = inside
        if mean_range is not None:
            sel = sel & (m >= mean_range[0]) & (m <= mean_range[1])
        sub = np.zeros_like(sel)
        sub[:, ::step, ::step] = True
        sel = sel & sub
        if sel.any():
            out[int(k)] = (m[sel], s[sel])
    return out


def _noise_in_region(
    hu: np.ndarray, region: np.ndarray, w: int, ks: np.ndarray, mean_range: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    per = _windows_per_slice(hu, region, w, ks, mean_range)
    if not per:
        return np.empty(0), np.empty(0)
    return np.concatenate([m for m, _ in per.values()]), np.concatenate([s for _, s in per.values()])


def _ct_noise_and_numbers(hu: np.ndarray, masks: _CTMasks, spacing: tuple[float, float, float], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "noise_sd_hu": None,
        "noise_soft_tissue_sd_hu": None,
        "noise_air_sd_hu": None,
        "air_hu": None,
        "air_hu_error": None,
        "soft_tissue_hu": None,
        "noise_windows_soft_tissue": 0,
        "noise_windows_air": 0,
        "noise_window_mm": None,
    }
    pix = float(max(spacing[0], spacing[1]))
    w = _window_px(pix)
    out["noise_window_mm"] = round(w * pix, 2)
    ks = _slice_subset(hu.shape[0], MAX_NOISE_SLICES)
    margin = max(1, int(round(10.0 / pix)))  # 10 mm clear of anything dense
    air_region = masks.valid & ~dilate2d(masks.dense_any | ~masks.valid, margin)
    am, asd = _noise_in_region(hu, air_region, w, ks, (-1100.0, -900.0))
    out["noise_windows_air"] = int(asd.size)
    if asd.size >= MIN_WINDOWS:
        # clipping at the bottom of the stored range (often -1024) truncates the air noise
        air_vals = hu[ks][air_region[ks]]
        floor = float(air_vals.min())
        clipped = float(np.mean(air_vals <= floor + 1e-3))
        air_sd = _mode(asd)
        out["air_hu"] = round(float(np.median(am)), 2)
        out["air_hu_error"] = round(out["air_hu"] - AIR_HU, 2)
        if clipped > 0.02:
            notes.append(
                f"air values are clipped at {floor:g} HU ({clipped:.0%} of air voxels): air noise not reported"
            )
        else:
            out["noise_air_sd_hu"] = round(air_sd, 3)
    else:
        notes.append(f"too little air outside the body for a noise estimate ({asd.size} windows)")
    per = _windows_per_slice(hu, masks.body_core, w, ks, SOFT_TISSUE_WINDOW_HU)
    sm = np.concatenate([m for m, _ in per.values()]) if per else np.empty(0)
    ssd = np.concatenate([x for _, x in per.values()]) if per else np.empty(0)
    # streak indicator: the noisiest slice against the median slice
    slice_modes = [_mode(x) for _, x in per.values() if x.size >= 50]
    out["noise_slice_max_ratio"] = (
        round(float(np.max(slice_modes) / np.median(slice_modes)), 3) if len(slice_modes) >= 3 else None
    )
    out["noise_windows_soft_tissue"] = int(ssd.size)
    if ssd.size >= MIN_WINDOWS:
        st_sd = _mode(ssd)
        homog = (ssd >= 0.8 * st_sd) & (ssd <= 1.25 * st_sd)
        out["noise_soft_tissue_sd_hu"] = round(st_sd, 3)
        out["soft_tissue_hu"] = round(float(np.median(sm[homog])) if homog.any() else float(np.median(sm)), 2)
    else:
        notes.append(f"too little homogeneous soft tissue for a noise estimate ({ssd.size} windows)")
    out["noise_sd_hu"] = out["noise_soft_tissue_sd_hu"] if out["noise_soft_tissue_sd_hu"] is not None else out["noise_air_sd_hu"]
    return out


def _lung_coverage(hu: np.ndarray, masks: _CTMasks, volume: Volume, notes: list[str]) -> dict[str, Any]:
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
    sx, sy, sz = volume.spacing
    px_area = sx * sy
    lung = masks.body_filled & (hu < -400.0) & masks.valid
    lung = open2d(lung)
    lab, n = ndi.label(lung)
    if n == 0:
        out.update(lungs_fully_covered=False, lung_volume_ml=0.0)
        notes.append("no lung found inside the body")
        return out
    sizes = component_sizes(lab, n) * px_area * sz
    keep_ids = np.nonzero(sizes >= max(50_000.0, 0.1 * sizes.max()))[0] + 1
    kept = np.isin(lab, keep_ids)
    vol_ml = float(kept.sum() * px_area * sz / 1000.0)
    out["lung_volume_ml"] = round(vol_ml, 1)
    if vol_ml < 100.0:
        out["lungs_fully_covered"] = False
        notes.append(f"only {vol_ml:.0f} mL of lung found")
        return out

    def lung_area(k: int) -> float:
        l2, m2 = ndi.label(kept[k])
        if m2 == 0:
            return 0.0
        areas = component_sizes(l2, m2) * px_area
        return float(areas[areas > TRACHEA_MAX_AREA_MM2].sum())

    first, last = lung_area(0), lung_area(hu.shape[0] - 1)
    out["lung_area_first_slice_mm2"] = round(first, 1)
    out["lung_area_last_slice_mm2"] = round(last, 1)
    out["lungs_fully_covered"] = bool(first == 0.0 and last == 0.0)
    return out


def _interslice_discontinuity(hu: np.ndarray, masks: _CTMasks, spacing: tuple[float, float, float]) -> float | None:
    """Largest mean |difference| between adjacent slices inside the body, over the median one. The
    slices are smoothed in plane first (2 mm) so that noise does not set the floor: what is left is
    anatomy changing along z, smooth in a still patient and a step where the patient moved."""
    nk = hu.shape[0]
    if nk < 5:
        return None
    sig = (0, 2.0 / spacing[1], 2.0 / spacing[0])
    sm = ndi.gaussian_filter(np.clip(hu, -1000, 1000), sigma=sig)
    union = masks.body_filled[:-1] | masks.body_filled[1:]
    d = []
    for k in range(nk - 1):
        m = union[k]
        if m.sum() < 100:
            d.append(np.nan)
            continue
        d.append(float(np.mean(np.abs(sm[k][m] - sm[k + 1][m]))))
    d = np.asarray(d)
    if np.all(np.isnan(d)):
        return None
    med = np.nanmedian(d)
    return round(float(np.nanmax(d) / med), 3) if med > 0 else None


def measure_ct(volume: Volume, slice_positions_mm: Sequence[float] | None = None) -> dict[str, Any]:
    hu = np.asarray(volume.array, dtype=np.float32)
    notes: list[str] = []
    masks = _ct_masks(hu, float(max(volume.spacing[0], volume.spacing[1])))
    res: dict[str, Any] = {"modality": "CT", "method": "local-SD mode in automatically found air and soft-tissue windows"}
    res.update(_ct_noise_and_numbers(hu, masks, volume.spacing, notes))
    res.update(_lung_coverage(hu, masks, volume, notes))
    pos = slice_positions_mm if slice_positions_mm is not None else slice_positions_from_volume(volume)
    res.update(slice_spacing_regularity(pos))
    # streak indicators: noise_slice_max_ratio (above) and metal
    res["metal_volume_mm3"] = round(float((hu > METAL_HU).sum() * volume.voxel_volume_mm3), 1)
    res["interslice_discontinuity_max_ratio"] = _interslice_discontinuity(hu, masks, volume.spacing)
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
