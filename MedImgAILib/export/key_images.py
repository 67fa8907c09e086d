"""Key images: Secondary Capture (true colour) of the measured slice with the lesion outline, the
long / short axis lines and the measurements burned in, for PACS viewers that do not display SEG.

Only non-identifying text is burned in (finding id, label, sizes, category), so BurnedInAnnotation
is NO.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from skimage.measure import find_contours

from ..errors import ExportError
from ..results import Finding
from ..volume import Volume
from .common import quiet_phi_warnings, DeviceInfo, ExportUIDs, add_related_series, write_atomic

LUNG_WINDOW = (-600.0, 1500.0)  # centre, width
SOFT_TISSUE_WINDOW = (40.0, 400.0)

OUTLINE_RGB = (255, 210, 0)
LONG_RGB = (0, 230, 0)
SHORT_RGB = (0, 200, 255)
TEXT_RGB = (255, 255, 255)


def windowed_rgb(slice_hu: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    g = np.clip((slice_hu.astype(np.float32) - lo) / width, 0.0, 1.0)
    g8 = (g * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(g8[:, :, None], 3, axis=2)


def _orientation_letters(v: np.ndarray) -> str:
    """Patient orientation letters (PS3.3 C.7.6.1.1.1) for an LPS direction, strongest first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(v))
    out = ""
    for ax in order:
        if abs(v[ax]) > 1e-3:
            out += letters[ax][0] if (v[ax] > 0) == (ax != 2) else letters[ax][1]
    return out[:3]


def caption(f: Finding) -> list[str]:
    lines = [f"{f.id} {f.label}" + (f" ({f.type})" if f.type else "")]
    if f.long_axis_mm is not None and f.short_axis_mm is not None:
        lines.append(f"{f.long_axis_mm:.1f} x {f.short_axis_mm:.1f} mm, mean {f.mean_diameter_mm:.1f} mm")
    if f.volume_mm3 is not None:
        lines.append(f"volume {f.volume_mm3:.0f} mm3" + (f", {f.mean_hu:.0f} HU" if f.mean_hu is not None else ""))
    for c in f.categories:
        lines.append(f"{c.system} {c.value}")
    return lines


def outline_paths(outline: np.ndarray, scale: int) -> list[list[tuple[float, float]]]:
    """The outline of a 2D mask as closed paths in the drawing's pixel coordinates (pixel centres
    at (i + 0.5) * scale). Traced on the mask's bounding box padded by one (so paths close at the
    edge), not on the whole slice: the same points, since a 0/1 mask puts them on whole and half
    pixels, which the shift keeps exact."""
    rows, cols = np.flatnonzero(outline.any(axis=1)), np.flatnonzero(outline.any(axis=0))
    if rows.size == 0:
        return []
    j0, i0 = int(rows[0]), int(cols[0])
    crop = outline[j0 : int(rows[-1]) + 1, i0 : int(cols[-1]) + 1]
    return [
        [((x - 1 + i0 + 0.5) * scale, (y - 1 + j0 + 0.5) * scale) for y, x in c]
        for c in find_contours(np.pad(crop.astype(np.float32), 1), 0.5)
    ]


def render_key_image(
    image: Volume,
    f: Finding,
    component_mask: Optional[np.ndarray],
    window: tuple[float, float] = LUNG_WINDOW,
    scale: int = 2,
) -> np.ndarray:
    """RGB uint8 [rows*scale, cols*scale, 3]: the windowed slice with outline, axes and text.
    Drawn at ``scale`` x the pixel grid so that lines and text stay legible on small matrices.
    ``component_mask`` is the lesion's 3D mask [k, j, i] or just its 2D mask [j, i] on the measured
    slice (all that is drawn)."""
    if f.slice_index is None:
        raise ExportError(f"finding {f.id} has no measured slice (slice_index): measure it before key images")
    k = int(f.slice_index)
    rgb = windowed_rgb(image.array[k], *window)
    img = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)

    def to_px(p_lps: Sequence[float]) -> tuple[float, float]:
        i, j, _k = image.lps_to_ijk(p_lps)
        return ((i + 0.5) * scale, (j + 0.5) * scale)

    outline = None
    if component_mask is not None:
        outline = component_mask if component_mask.ndim == 2 else component_mask[k]
    if outline is not None and outline.any():
        for pts in outline_paths(outline, scale):
            draw.line(pts + [pts[0]], fill=OUTLINE_RGB, width=1)
    if len(f.long_axis_lps_mm) == 2:
        draw.line([to_px(p) for p in f.long_axis_lps_mm], fill=LONG_RGB, width=2)
    if len(f.short_axis_lps_mm) == 2:
        draw.line([to_px(p) for p in f.short_axis_lps_mm], fill=SHORT_RGB, width=2)
    size = max(12, img.height // 40)
    font = _font(size)
    y = 4
    for line in caption(f):
        draw.text((6, y), line, fill=TEXT_RGB, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += size + 4
    return np.asarray(img)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """The caption font, loaded once per size (every key image of a study uses the same)."""
    return ImageFont.load_default(size=size)


def build_key_images(
    image: Volume,
    findings: Sequence[Finding],
    sources: Sequence[Dataset],
    device: DeviceInfo,
    uids: Optional[ExportUIDs] = None,
    *,
    instance_map: Optional[np.ndarray] = None,
    window: Optional[tuple[float, float]] = None,
    series_number: int = 9003,
    related_series: Sequence[str] = (),
    scale: int = 2,
) -> list[hd.sc.SCImage]:
    """One true-colour SC per finding, on the finding's measured slice; ``sources`` in the image's k
    order. ``instance_map`` (value ``Finding.instance_value``) draws the outlines."""
    uids = uids or ExportUIDs()
    if len(sources) != image.array.shape[0]:
        raise ExportError(f"{len(sources)} source images for a volume of {image.array.shape[0]} slices")
    out = []
    for n, f in enumerate(findings, start=1):
        if f.slice_index is None:
            raise ExportError(f"finding {f.id} has no measured slice (slice_index): measure it before key images")
        # only the measured slice is drawn: compare that slice, not the whole volume
        mask = (instance_map[int(f.slice_index)] == (f.instance_value or n)) if instance_map is not None else None
        win = window or (LUNG_WINDOW if f.type else SOFT_TISSUE_WINDOW)
        rgb = render_key_image(image, f, mask, win, scale)
        ref = sources[int(f.slice_index)]  # type: ignore[arg-type]
        row_sp, col_sp = (float(x) for x in ref.PixelSpacing)
        iop = np.asarray(ref.ImageOrientationPatient, dtype=np.float64)
        with quiet_phi_warnings():
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=ref,
                pixel_array=rgb,
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=uids.key_image_series,
                series_number=series_number,
                sop_instance_uid=uids.key_image(n),
                instance_number=n,
                manufacturer=device.manufacturer,
                pixel_spacing=(row_sp / scale, col_sp / scale),
                patient_orientation=(_orientation_letters(iop[:3]), _orientation_letters(iop[3:])),
                series_description=f"AI key images {device.model_id}"[:64],
            )
        sc.BurnedInAnnotation = "NO"
        if "Laterality" not in sc:  # Type 2C in General Series: present, empty = not a paired organ image
            sc.Laterality = None
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.DerivationDescription = f"{f.id} measured by {device.model_id} {device.model_version}"[:1024]
        src = Dataset()
        src.ReferencedSOPClassUID = ref.SOPClassUID
        src.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        sc.SourceImageSequence = [src]
        if related_series:
            add_related_series(sc, sc.StudyInstanceUID, related_series)
        out.append(sc)
    return out


def write_key_images(images: Sequence[Dataset], folder: str | os.PathLike[str]) -> list[Path]:
    folder = Path(folder)
    return [write_atomic(ds, folder / f"key_{int(ds.InstanceNumber):03d}.dcm") for ds in images]
