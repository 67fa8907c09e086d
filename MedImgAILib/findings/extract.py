"""Findings from a model's label map: connected components, per-lesion measurements, probability.

Input: a label-map ``Volume`` on the grid of the source image (same shape and affine), the source image
itself (for HU statistics, the solid core and the body midline), optionally a probability map. Output:
``results.Finding`` objects with unrounded measurements (DESIGN.md: a rule rounds, not we).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import MedImgAIError
from ..masks import fill_holes2d
from ..results import Code, Finding
from ..volume import Volume
from .measure import AxialAxes, axial_axes_if_larger, centroid_lps, max_3d_diameter


class FindingsError(MedImgAIError):
    kind = "findings"


# SNOMED CT codes used for lung findings and sites (the ones DICOM CID 6102 / 6117 / 244 list).
SCT = "SCT"
NODULE = Code(value="27925004", scheme=SCT, meaning="Nodule")
LUNG = Code(value="39607008", scheme=SCT, meaning="Lung")
RIGHT_LUNG = Code(value="3341006", scheme=SCT, meaning="Right lung")
LEFT_LUNG = Code(value="44029006", scheme=SCT, meaning="Left lung")
LOBES = {
    "right upper lobe": Code(value="45653009", scheme=SCT, meaning="Upper lobe of right lung"),
    "right middle lobe": Code(value="72481006", scheme=SCT, meaning="Middle lobe of right lung"),
    "right lower lobe": Code(value="90572001", scheme=SCT, meaning="Lower lobe of right lung"),
    "left upper lobe": Code(value="44714003", scheme=SCT, meaning="Upper lobe of left lung"),
    "left lower lobe": Code(value="41224006", scheme=SCT, meaning="Lower lobe of left lung"),
}


@dataclass
class LabelSpec:
    """What one label value of the model output means (from the model card)."""

    value: int
    name: str
    #: finding type (SR) / segmented property type (SEG); SNOMED CT
    finding_code: Code = field(default_factory=lambda: NODULE)
    #: segmented property category (SEG); SNOMED CT
    category_code: Code = field(
        default_factory=lambda: Code(value="49755003", scheme=SCT, meaning="Morphologically abnormal structure")
    )
    #: anatomic site when the label implies one (a lobe model, an organ model)
    site_code: Optional[Code] = None
    #: components smaller than this are dropped (model card's minimum lesion size)
    min_size_mm3: float = 0.0
    #: lung lesions get nodule type, side, solid core; organ labels only geometry and HU
    is_lung_lesion: bool = True


@dataclass
class TypeThresholds:
    """Nodule type from attenuation. Solid tissue is > ``solid_hu`` (the usual -300 HU split between
    ground glass and solid); a nodule is *solid* when at least ``solid_fraction`` of its interior
    (the mask eroded by one voxel, so partial-volume edge voxels do not vote) is solid, *part-solid*
    when it holds a solid core whose equivalent-sphere diameter is at least ``min_core_mm``, and
    *ground-glass* otherwise."""

    solid_hu: float = -300.0
    solid_fraction: float = 0.8
    min_core_mm: float = 1.5


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    ks, js, is_ = (np.nonzero(mask.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1)))
    return slice(ks[0], ks[-1] + 1), slice(js[0], js[-1] + 1), slice(is_[0], is_[-1] + 1)


def largest_axial_axes(
    mask: np.ndarray,
    affine: np.ndarray,
    offset_kji: tuple[int, int, int] = (0, 0, 0),
    field: Optional[np.ndarray] = None,
) -> tuple[int, AxialAxes]:
    """Axes on the axial slice where the region is largest. Slices within 80 % of the largest area
    are all measured and the one with the largest mean diameter is kept, so that a one-voxel
    difference in area does not pick a visibly smaller outline. ``field`` (same shape, values in
    [0, 1]) gives the sub-voxel outline; the binary mask is used when it is None."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if areas.max() == 0:
        raise FindingsError("empty lesion mask")
    field = mask if field is None else field
    k0 = offset_kji[0]
    candidates = np.nonzero(areas >= 0.8 * areas.max())[0]
    # Largest area first: its mean diameter is usually the one to beat, and a slice whose long axis
    # is already shorter than that is settled without measuring its short axis. The winner is the
    # same as measuring every slice in k order: the largest mean, the lowest slice among equal ones.
    order = candidates[np.argsort(-areas[candidates], kind="stable")]
    best: tuple[int, AxialAxes] | None = None
    for kk in order:
        ax = axial_axes_if_larger(field[kk], int(kk) + k0, affine, (offset_kji[1], offset_kji[2]),
                                  None if best is None else best[1].mean_mm)
        if ax is None:
            continue
        k_abs = int(kk) + k0
        if best is None or ax.mean_mm > best[1].mean_mm or (ax.mean_mm == best[1].mean_mm and k_abs < best[0]):
            best = (k_abs, ax)
    assert best is not None
    return best


def body_region(image: Volume, k: int) -> Optional[np.ndarray]:
    """The largest connected region above -500 HU on slice k (the body, not the table or air); None
    when there is none. (The first of equal largest regions, as ``argmax`` picks.)"""
    lab, n = ndimage.label(np.asarray(image.array[k]) > -500)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def body_midline_x_lps(image: Volume, k: int, body: Optional[np.ndarray] = None) -> Optional[float]:
    """LPS x of the body's left-right centre on slice k: the middle of the largest connected region
    above -500 HU (the body, not the table or air). None when no body is visible. ``body``: that
    region when the caller has it already (``body_region``)."""
    body = body_region(image, k) if body is None else body
    if body is None or not body.any():
        return None
    # x is affine in (i, j): along one row it is monotonic in i, so its extremes over the region are
    # among the first and last region pixel of each row (two points a row, not every pixel)
    rows = np.flatnonzero(body.any(axis=1))
    in_rows = body[rows]
    first = np.argmax(in_rows, axis=1)
    last = body.shape[1] - 1 - np.argmax(in_rows[:, ::-1], axis=1)
    j = np.concatenate([rows, rows])
    i = np.concatenate([first, last])
    ijk = np.stack([i, j, np.full_like(i, k), np.ones_like(i)], axis=1).astype(np.float64)
    x = (ijk @ image.affine.T)[:, 0]
    return float((x.min() + x.max()) / 2.0)


def pleural_contact_fraction(image: Volume, mask: np.ndarray, off: tuple[int, int, int], k: int,
                             body: Optional[np.ndarray] = None) -> float:
    """Fraction of the lesion's area on slice k that is continuous with the chest wall or the
    mediastinum rather than enclosed by lung.

    On the slice: body = largest region > -500 HU (holes filled); lung cavity = the body's air
    (<= -500 HU) with its holes filled, which takes in everything surrounded by lung (vessels seen in
    cross-section, free nodules); wall = body outside the cavity. A nodule attached to the pleura is
    not enclosed by air, so its voxels are wall. A heuristic (vessels running in-plane to the hilum
    can join a nodule to the mediastinum): it sets ``Finding.juxtapleural`` at >= 10 %. ``body``: the
    slice's ``body_region`` when the caller has it already."""
    m = mask[k - off[0]]
    if not m.any():
        return 0.0
    sl = np.asarray(image.array[k])
    region = body_region(image, k) if body is None else body
    if region is None or not region.any():
        return 0.0
    # Both fills work on the body's bounding box grown by one pixel (clipped to the slice): outside
    # the body box everything is background connected to the slice border, and so is that one-pixel
    # frame, so a background pixel of the window reaches the window's border exactly when it reaches
    # the slice's: the same holes, in a third of the pixels.
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    r0, c0 = max(int(rows[0]) - 1, 0), max(int(cols[0]) - 1, 0)
    win = (slice(r0, int(rows[-1]) + 2), slice(c0, int(cols[-1]) + 2))
    body = fill_holes2d(region[win])
    cavity = fill_holes2d(body & (sl[win] <= -500))
    wall = np.zeros(sl.shape, dtype=bool)
    wall[win] = body & ~cavity
    m0, m1 = off[1], off[2]
    return float((m & wall[m0 : m0 + m.shape[0], m1 : m1 + m.shape[1]]).sum()) / max(int(m.sum()), 1)


def _check_grid(labels: Volume, other: Volume, what: str) -> None:
    if labels.array.shape != other.array.shape or not np.allclose(labels.affine, other.affine, atol=1e-3):
        raise FindingsError(
            f"{what} grid {other.array.shape} does not match the label map grid {labels.array.shape} "
            f"(series {other.series_instance_uid or '?'}): resample the model output to the source grid first"
        )


def extract_findings(
    labels: Volume,
    image: Optional[Volume] = None,
    probability: Optional[Volume] = None,
    label_specs: Optional[Sequence[LabelSpec]] = None,
    *,
    min_size_mm3: Optional[float] = None,
    probability_reduce: str = "max",
    thresholds: TypeThresholds = TypeThresholds(),
    connectivity: int = 3,
    return_instance_map: bool = False,
    partial_volume: bool = True,
) -> list[Finding] | tuple[list[Finding], np.ndarray]:
    """Connected components per label, each measured, largest first within a label.

    With ``return_instance_map`` also returns a uint16 [k, j, i] map holding n at the voxels of the
    n-th finding (``F<n>``) and 0 elsewhere (dropped components included): the SEG's input, one
    segment per finding, so that each SR measurement group references exactly its own lesion.

    ``min_size_mm3`` overrides every ``LabelSpec.min_size_mm3``. ``probability_reduce`` is "max"
    (the detection score convention) or "mean" over the component's voxels. ``connectivity`` is the
    scipy neighbourhood (1 = faces, 3 = faces+edges+corners). ``partial_volume`` (with an image):
    volumes from partial-volume occupancy (``partial_volume_mm3``) instead of voxel counts."""
    if image is not None:
        _check_grid(labels, image, "image")
    if probability is not None:
        _check_grid(labels, probability, "probability map")
    if probability_reduce not in ("max", "mean"):
        raise FindingsError(f"probability_reduce must be 'max' or 'mean', not {probability_reduce!r}")
    arr = np.asarray(labels.array)
    specs = {s.value: s for s in (label_specs or [])}
    vox_mm3 = labels.voxel_volume_mm3
    structure = ndimage.generate_binary_structure(3, connectivity)
    findings: list[Finding] = []
    instance = np.zeros(arr.shape, dtype=np.uint16) if return_instance_map else None
    # Lesions fill a few percent of the volume at most: find, label and count components only inside
    # the boxes of the runs of consecutive labelled slices ("slabs"). No component crosses an empty
    # slice, so each lies wholly inside one slab; slabs come in k order and a crop keeps the raster
    # order, so numbering the slabs' components one after the other gives the full volume's numbering
    # (and hence the same order among components of equal size).
    slabs = foreground_slabs(arr)
    if not slabs:
        return (findings, instance) if instance is not None else findings
    subs = [arr[box] for box in slabs]
    present = sorted({int(v) for sub in subs for v in np.unique(sub) if v != 0})
    for v in present:
        specs.setdefault(v, LabelSpec(value=v, name=f"label {v}"))
    for v in present:
        spec = specs[v]
        min_mm3 = spec.min_size_mm3 if min_size_mm3 is None else min_size_mm3
        # per component: (slab number, its label in that slab, its box in the slab)
        comps: list[tuple[int, int, tuple[slice, ...]]] = []
        labelled: list[np.ndarray] = []
        for si, sub in enumerate(subs):
            comp, n = ndimage.label(sub == v, structure=structure)
            labelled.append(comp)
            comps.extend((si, i, o) for i, o in enumerate(ndimage.find_objects(comp), start=1) if o is not None)
        if not comps:
            continue
        # voxel counts inside each component's own box (a bincount over the whole crop costs more)
        counts = np.array([np.count_nonzero(labelled[si][o] == i) for si, i, o in comps], dtype=np.int64)
        order = np.argsort(-counts, kind="stable")
        for idx in order:
            if counts[idx] * vox_mm3 < min_mm3:
                continue
            si, lab, o = comps[idx]
            slab, origin = slabs[si], tuple(s.start for s in slabs[si])
            obj = tuple(slice(s.start + o0, s.stop + o0) for s, o0 in zip(o, origin))
            bb = _expand(obj, arr.shape, 3)
            # the component's mask on the expanded box: the slab's labels where they overlap it
            # (the margin beyond the slab's box holds no voxel of this component)
            mask = np.zeros(tuple(s.stop - s.start for s in bb), dtype=bool)
            inner = tuple(slice(max(b.start, f.start), min(b.stop, f.stop)) for b, f in zip(bb, slab))
            mask[tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, bb))] = (
                labelled[si][tuple(slice(i.start - o0, i.stop - o0) for i, o0 in zip(inner, origin))] == lab
            )
            f = measure_component(
                mask, bb, labels, image, probability, spec, probability_reduce=probability_reduce, thresholds=thresholds,
                partial_volume=partial_volume,
            )
            findings.append(f)
            if instance is not None:
                instance[bb][mask] = len(findings)
    for n, f in enumerate(findings, start=1):
        f.id = f"F{n}"
        f.instance_value = n  # its value in the instance map (results.Outputs.instance_map)
    if instance is not None:
        return findings, instance
    return findings


def nonzero_slices(arr: np.ndarray) -> np.ndarray:
    """Per k slice: whether it holds a non-zero voxel, in one pass over the volume. An integer or
    boolean map is read as 8-byte words where its slices allow (a slice is non-zero exactly when one
    of its words is): on a 512x512x300 uint16 map 18 ms instead of 42 ms for ``any``."""
    flat = arr.reshape(arr.shape[0], -1)
    row_bytes = flat.shape[1] * flat.itemsize
    if arr.dtype.kind in "uib" and flat.flags.c_contiguous and row_bytes % 8 == 0 and row_bytes:
        return flat.view(np.uint64).max(axis=1) != 0
    return flat.any(axis=1)  # floats (-0.0 is zero), odd-sized or strided slices


def _box_of_slab(arr: np.ndarray, k0: int, k1: int) -> tuple[slice, slice, slice]:
    slab = arr[k0:k1]
    if arr.dtype.kind in "uib":  # the slab's maximum bit pattern per pixel, then its rows and columns
        top = slab.view(np.dtype(f"u{arr.itemsize}")).max(axis=0)  # ints: non-zero exactly when the bits are
        js, is_ = np.flatnonzero(top.any(axis=1)), np.flatnonzero(top.any(axis=0))
    else:
        js, is_ = np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1)))
    return slice(k0, k1), slice(int(js[0]), int(js[-1]) + 1), slice(int(is_[0]), int(is_[-1]) + 1)


def foreground_box(arr: np.ndarray) -> Optional[tuple[slice, slice, slice]]:
    """Bounding box of the non-zero voxels, or None when there are none. The slice range comes from
    one pass over the volume; the row/column ranges only from the slices in it."""
    ks = np.flatnonzero(nonzero_slices(arr))
    if ks.size == 0:
        return None
    return _box_of_slab(arr, int(ks[0]), int(ks[-1]) + 1)


def foreground_slabs(arr: np.ndarray) -> list[tuple[slice, slice, slice]]:
    """Boxes of the non-zero voxels, one per run of consecutive slices that hold any, in k order
    (empty list when there are none). A connected component never spans an empty slice, so each
    lies wholly inside one of these boxes, which hold far fewer voxels than the overall box when
    lesions are scattered along the scan."""
    ks = np.flatnonzero(nonzero_slices(arr))
    if ks.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ks) > 1)
    starts = np.concatenate([ks[:1], ks[breaks + 1]])
    stops = np.concatenate([ks[breaks], ks[-1:]]) + 1
    return [_box_of_slab(arr, int(a), int(b)) for a, b in zip(starts, stops)]


def _expand(bb: tuple[slice, ...], shape: tuple[int, ...], margin: int) -> tuple[slice, slice, slice]:
    """The bounding box grown by ``margin`` voxels (clipped), so partial-volume voxels just outside
    the mask and the background ring around it are in the crop."""
    return tuple(  # type: ignore[return-value]
        slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(bb, shape)
    )


@dataclass
class MaskShells:
    """A lesion mask's interior and the shells around it that the partial-volume measures share,
    each computed once per lesion (``mask_shells``)."""

    inner: np.ndarray  # the mask eroded by one voxel (faces)
    dil1: np.ndarray  # the mask dilated by one voxel (faces)
    ring: np.ndarray  # voxels 3 but not 2 dilation steps outside the mask: the local background
    bg_hu: Optional[float] = None  # median HU in the ring (set by ``mask_shells`` given the HU)
    inner_hu: Optional[float] = None  # median HU of the interior when it has >= 8 voxels


def mask_shells(mask: np.ndarray, hu: Optional[np.ndarray] = None) -> MaskShells:
    """Interior, one-voxel dilation and background ring of ``mask`` (with their median HU given the
    crop's ``hu``). The ring's dilations are one step each from the previous one: the same sets as
    ``binary_dilation(mask, iterations=n)``, in three steps instead of five."""
    inner = ndimage.binary_erosion(mask)
    dil1 = ndimage.binary_dilation(mask)
    dil2 = ndimage.binary_dilation(dil1)
    ring = ndimage.binary_dilation(dil2) & ~dil2
    sh = MaskShells(inner=inner, dil1=dil1, ring=ring)
    if hu is not None:
        if ring.any():
            sh.bg_hu = float(np.median(hu[ring]))
        if inner.sum() >= 8:
            sh.inner_hu = float(np.median(hu[inner]))
    return sh


def occupancy_field(mask: np.ndarray, hu: np.ndarray, min_contrast_hu: float = 200.0,
                    shells: Optional[MaskShells] = None) -> Optional[np.ndarray]:
    """Sub-voxel occupancy in [0, 1] from the partial-volume HU of the voxels along the mask edge.

    Lesion (fg) and background (bg) levels are the medians of the mask interior and of a ring 2-3
    voxels outside it; each edge voxel's occupancy is (HU - bg) / (fg - bg). Inside-edge voxels are
    clamped to [0.5, 1] and outside-edge voxels to [0, 0.5), so the 0.5 outline always stays between
    the same voxel centres as the binary mask's outline and only its sub-voxel position moves: an
    adjacent vessel cannot pull the outline outwards. None when the contrast is too low to trust.
    ``shells``: ``mask_shells(mask, hu)`` when the caller has it already."""
    sh = mask_shells(mask, hu) if shells is None else shells
    inner, dil1 = sh.inner, sh.dil1
    if sh.bg_hu is None:  # no background ring in the crop
        return None
    fg = sh.inner_hu if sh.inner_hu is not None else float(np.median(hu[mask]))
    bg = sh.bg_hu
    if fg - bg < min_contrast_hu:
        return None
    occ = np.clip((hu.astype(np.float32) - bg) / (fg - bg), 0.0, 1.0)
    field = np.zeros(mask.shape, dtype=np.float32)
    field[inner] = 1.0
    edge_in = mask & ~inner
    field[edge_in] = np.clip(occ[edge_in], 0.5, 1.0)
    edge_out = dil1 & ~mask
    out_occ = occ[edge_out]
    field[edge_out] = np.where(out_occ >= 0.5, 0.0, out_occ)
    return field


def partial_volume_mm3(
    mask: np.ndarray, hu: np.ndarray, voxel_mm3: float, min_contrast_hu: float = 200.0,
    shells: Optional[MaskShells] = None,
) -> Optional[float]:
    """Partial-volume-aware volume: interior voxels count 1, voxels on either side of the mask edge
    count their occupancy (HU - bg) / (fg - bg). Blur (the scanner's PSF and slice profile)
    conserves this sum, so the estimate does not shrink small nodules the way a half-way threshold
    does; occupancies are not clipped at 0 so that noise in the background ring averages out.
    Outside voxels brighter than half-way are another structure (vessel, pleura) and count 0.
    None when the lesion/background contrast is too low to trust (then: voxel count). ``shells``:
    ``mask_shells(mask, hu)`` when the caller has it already."""
    full = ndimage.generate_binary_structure(3, 3)
    sh = mask_shells(mask, hu) if shells is None else shells
    inner = sh.inner
    if sh.bg_hu is None or sh.inner_hu is None:  # no ring, or fewer than 8 interior voxels
        return None
    fg, bg = sh.inner_hu, sh.bg_hu
    if fg - bg < min_contrast_hu:
        return None
    occ = (hu.astype(np.float64) - bg) / (fg - bg)
    edge_in = mask & ~inner
    shell = ndimage.binary_dilation(mask, structure=full) & ~mask
    o_in = np.clip(occ[edge_in], -0.5, 1.5)
    o_out = occ[shell]
    o_out = np.where(o_out >= 0.5, 0.0, np.maximum(o_out, -0.5))
    return float(inner.sum() + o_in.sum() + o_out.sum()) * voxel_mm3


def measure_component(
    mask: np.ndarray,
    bbox: tuple[slice, slice, slice],
    labels: Volume,
    image: Optional[Volume],
    probability: Optional[Volume],
    spec: LabelSpec,
    *,
    probability_reduce: str = "max",
    thresholds: TypeThresholds = TypeThresholds(),
    partial_volume: bool = True,
) -> Finding:
    """All measurements of one component, given as a mask cropped to ``bbox`` (with a margin)."""
    aff = labels.affine
    off = (bbox[0].start, bbox[1].start, bbox[2].start)
    hu = np.asarray(image.array[bbox]) if image is not None else None
    shells = mask_shells(mask, hu) if hu is not None else None  # shared by the partial-volume measures
    field = occupancy_field(mask, hu, shells=shells) if hu is not None else None
    k_used, axes = largest_axial_axes(mask, aff, off, field=field)
    f = Finding(
        id="",
        label=spec.name,
        label_value=spec.value,
        center_lps_mm=centroid_lps(mask, aff, off),
        volume_mm3=_volume_mm3(mask, hu, labels.voxel_volume_mm3, partial_volume, shells),
        long_axis_mm=axes.long_mm,
        short_axis_mm=axes.short_mm,
        mean_diameter_mm=axes.mean_mm,
        max_3d_diameter_mm=max_3d_diameter(mask if field is None else field, aff, off),
        slice_index=k_used,
        long_axis_lps_mm=axes.long_lps,
        short_axis_lps_mm=axes.short_lps,
        finding_code=spec.finding_code,
        site_code=spec.site_code,
    )
    if probability is not None:
        p = np.asarray(probability.array[bbox])[mask].astype(np.float64)
        f.probability = float(p.max() if probability_reduce == "max" else p.mean())
    if hu is not None and image is not None:
        v = hu[mask].astype(np.float64)
        f.mean_hu = float(v.mean())
        f.sd_hu = float(v.std(ddof=1)) if v.size > 1 else 0.0
        if spec.is_lung_lesion:
            _lung_attributes(f, mask, off, hu, labels, image, thresholds, interior=shells.inner if shells else None)
    return f


def _volume_mm3(mask: np.ndarray, hu: Optional[np.ndarray], voxel_mm3: float, partial_volume: bool,
                shells: Optional[MaskShells] = None) -> float:
    if partial_volume and hu is not None:
        v = partial_volume_mm3(mask, hu, voxel_mm3, shells=shells)
        if v is not None:
            return v
    return float(mask.sum()) * voxel_mm3


def _lung_attributes(
    f: Finding,
    mask: np.ndarray,
    off: tuple[int, int, int],
    hu: np.ndarray,
    labels: Volume,
    image: Volume,
    th: TypeThresholds,
    interior: Optional[np.ndarray] = None,
) -> None:
    """Nodule type, solid core (enclosed solid tissue, vessels excluded) and side. ``interior``: the
    mask eroded by one voxel, when the caller has it."""
    solid = mask & (hu > th.solid_hu)
    interior = ndimage.binary_erosion(mask) if interior is None else interior
    if not interior.any():
        interior = mask
    solid_fraction = float(solid[interior].mean())
    if solid_fraction >= th.solid_fraction:
        f.type = "solid"  # the core only tells part-solid from ground-glass: not looked for here
    else:
        core_axes = _solid_core_axes(mask, off, hu, solid, labels, th)
        if core_axes is not None:
            f.type = "part-solid"
            f.solid_core_mean_diameter_mm = core_axes.mean_mm
        else:
            f.type = "ground-glass"
    k = int(f.slice_index or 0)
    body = body_region(image, k)  # one labelling of the slice for both questions
    f.juxtapleural = bool(pleural_contact_fraction(image, mask, off, k, body=body) >= 0.1)
    # side: LPS +x is the patient's left
    mid = body_midline_x_lps(image, k, body=body)
    if mid is not None:
        f.side = "left" if f.center_lps_mm[0] > mid else "right"
        if f.site_code is None:
            f.site_code = LEFT_LUNG if f.side == "left" else RIGHT_LUNG
    if not f.location:
        for lobe in LOBES:
            if lobe in f.label.lower():
                f.location = lobe
                f.site_code = LOBES[lobe]
                break


def _solid_core_axes(
    mask: np.ndarray, off: tuple[int, int, int], hu: np.ndarray, solid: np.ndarray, labels: Volume, th: TypeThresholds
) -> Optional[AxialAxes]:
    """Axial axes of the nodule's solid core (``solid``: the mask's voxels above ``th.solid_hu``), or
    None when it has none at least ``th.min_core_mm`` across (equivalent-sphere diameter)."""
    # A solid core is enclosed by the ground-glass part. Solid tissue that continues outside the
    # lesion (a vessel running into it, the pleura) is not a core: drop solid components that are
    # connected, through solid voxels, to solid tissue beyond the lesion's edge.
    # Thin solid structures (vessels up to ~2 voxels across) are removed by an opening first, which
    # also cuts a core loose from a vessel that leads to it.
    full = ndimage.generate_binary_structure(3, 3)
    opened = ndimage.binary_opening(hu > th.solid_hu, structure=ndimage.generate_binary_structure(3, 1))
    solid = solid & opened
    solid_all, _n = ndimage.label(opened, structure=full)
    outside = ~ndimage.binary_dilation(mask, structure=full)
    external = np.unique(solid_all[outside & (solid_all > 0)])
    solid = solid & ~np.isin(solid_all, external)
    if not solid.any():
        return None
    comp, _n = ndimage.label(solid, structure=full)
    counts = np.bincount(comp.ravel())[1:]
    core = comp == (int(np.argmax(counts)) + 1)
    core_mm = float((6.0 * core.sum() * labels.voxel_volume_mm3 / np.pi) ** (1.0 / 3.0))
    if core_mm < th.min_core_mm:
        return None
    return largest_axial_axes(core, labels.affine, off)[1]


def iter_label_specs(labels: Mapping[int, str] | Iterable[LabelSpec]) -> list[LabelSpec]:
    """LabelSpecs from a model card's ``{value: name}`` map (or pass LabelSpecs through)."""
    if isinstance(labels, Mapping):
        return [LabelSpec(value=int(v), name=str(n)) for v, n in labels.items()]
    return list(labels)


def label_specs_from_card(card: Any) -> list[LabelSpec]:
    """What each label of a model card means to the findings stage (codes, minimum size, lung lesion)."""
    lung = LUNG.value
    specs = []
    for lab in card.labels:
        region = lab.anatomic_region
        specs.append(LabelSpec(
            value=lab.value, name=lab.name,
            finding_code=Code(value=lab.type.value, scheme=lab.type.scheme, meaning=lab.type.meaning),
            category_code=Code(value=lab.category.value, scheme=lab.category.scheme, meaning=lab.category.meaning),
            site_code=Code(value=region.value, scheme=region.scheme, meaning=region.meaning) if region else None,
            min_size_mm3=float(getattr(lab, "min_volume_mm3", 0.0) or getattr(card, "min_lesion_volume_mm3", 0.0) or 0.0),
            is_lung_lesion=card.body_region.value == lung and lab.type.value == "27925004",
        ))
    return specs
