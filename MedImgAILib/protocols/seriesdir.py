"""Read one series from a folder for ``medimgai qc``: headers of every file, the slice centres along the
slice normal (what the spacing check needs, measured, not assumed), the normalized metadata, and the
pixels as a ``Volume`` in HU / stored units.

Kept deliberately small: it reads single-frame series (and a single multi-frame file as one volume
when its frames are regular). ``MedImgAILib.dicom`` owns full series loading (gantry tilt, enhanced
multi-frame, mixed series); this reader only serves the QC command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..dicom.metadata import SeriesMetadata, extract_metadata
from ..errors import GeometryError, MissingPixelDataError, NoSeriesFoundError, ProtocolError
from ..volume import Volume, affine_from_geometry


@dataclass
class SeriesOnDisk:
    metadata: SeriesMetadata
    files: list[Path]  # sorted along the slice normal
    slice_positions_mm: list[float]
    series_instance_uid: str


def _headers(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "SeriesInstanceUID" not in ds:
            continue
        # image storage objects only (skip SEG/SR/RT next to the images)
        if ds.get("Modality", "") in ("SEG", "SR", "RTSTRUCT", "KO", "PR"):
            continue
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    return by_series


def find_series(folder: str | Path, series_uid: str | None = None) -> SeriesOnDisk:
    folder = Path(folder)
    if not folder.exists():
        raise NoSeriesFoundError(f"{folder} does not exist")
    if folder.is_file():
        groups = {}
        ds = pydicom.dcmread(folder, stop_before_pixels=True)
        groups[str(ds.get("SeriesInstanceUID", ""))] = [(folder, ds)]
    else:
        groups = _headers(folder)
    if not groups:
        raise NoSeriesFoundError(f"no DICOM image series found under {folder}")
    if series_uid is not None:
        if series_uid not in groups:
            raise NoSeriesFoundError(f"series {series_uid} is not under {folder}; found: {', '.join(groups)}")
        uid = series_uid
    elif len(groups) > 1:
        listing = ", ".join(f"{u} ({len(v)} files)" for u, v in groups.items())
        raise ProtocolError(f"{folder} holds {len(groups)} series ({listing}); choose one with --series UID")
    else:
        uid = next(iter(groups))
    items = groups[uid]
    first = items[0][1]
    positions: list[float] = []
    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in items):
        iop = np.asarray(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        pos = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for _, ds in items]
        order = np.argsort(pos, kind="stable")
        items = [items[i] for i in order]
        positions = [pos[i] for i in order]
    md = extract_metadata(items[0][1], number_of_instances=len(items))
    return SeriesOnDisk(metadata=md, files=[f for f, _ in items], slice_positions_mm=positions, series_instance_uid=uid)


def _frame_to_stored(ds: Any) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return arr * slope + intercept


def load_series_volume(series: SeriesOnDisk) -> Volume:
    """Pixels of the series as a Volume (rescaled to HU for CT)."""
    slices = []
    first = None
    for f in series.files:
        ds = pydicom.dcmread(f)
        if "PixelData" not in ds:
            raise MissingPixelDataError(f"series {series.series_instance_uid}: {f.name} has no pixel data")
        first = first or ds
        a = _frame_to_stored(ds)
        if a.ndim == 3:  # multi-frame
            slices.extend(list(a))
        else:
            slices.append(a)
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise GeometryError(f"series {series.series_instance_uid} mixes slice sizes {sorted(shapes)}")
    arr = np.stack(slices)
    iop = np.asarray(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ps = [float(x) for x in first.get("PixelSpacing", [1.0, 1.0])]
    if len(series.slice_positions_mm) >= 2:
        dz = float(np.median(np.diff(series.slice_positions_mm)))
    else:
        dz = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    origin = [float(x) for x in first.get("ImagePositionPatient", [0, 0, 0])]
    direction = np.column_stack([row, col, normal])
    aff = affine_from_geometry(origin, (ps[1], ps[0], dz if dz > 0 else 1.0), direction)
    extra: dict[str, Any] = {}
    if len(series.slice_positions_mm) == arr.shape[0]:
        extra["slice_positions_mm"] = list(series.slice_positions_mm)
    return Volume(
        array=arr,
        affine=aff,
        series_instance_uid=series.series_instance_uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        modality=str(first.get("Modality", "")),
        metadata=series.metadata,
        extra=extra,
    )
