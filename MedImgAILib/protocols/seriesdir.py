"""One series from a folder for ``medimgai qc``, through the dicom stage's scanner and loader: the
normalized metadata and the slice centres along the normal come from the headers alone (a header-only
check reads no pixels); the pixels load only when image quality is wanted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..dicom.geometry import stack_geometry
from ..dicom.load import load_series
from ..dicom.metadata import SeriesMetadata
from ..dicom.scan import SeriesRef, scan_tree, select_series
from ..errors import DicomInputError, NoSeriesFoundError
from ..volume import Volume


@dataclass
class SeriesOnDisk:
    metadata: SeriesMetadata
    ref: SeriesRef
    #: slice centres along the normal, sorted (mm); empty when the headers carry no positions
    slice_positions_mm: list[float]
    series_instance_uid: str


def find_series(folder: str | Path, series_uid: str | None = None) -> SeriesOnDisk:
    folder = Path(folder)
    if not folder.exists():
        raise NoSeriesFoundError(f"{folder} does not exist")
    refs = scan_tree(folder).series
    images = [r for r in refs if r.is_image]
    uids = sorted({r.series_instance_uid for r in images})
    if series_uid is None and len(uids) > 1:
        listing = ", ".join(r.describe() for r in images[:6]) + (" ..." if len(images) > 6 else "")
        raise DicomInputError(f"{folder} holds {len(uids)} image series ({listing}); choose one with --series UID")
    ref = select_series(refs, series_uid, str(folder))
    positions: list[float] = []
    if all(s.position_lps is not None and s.orientation is not None for s in ref.slices):
        sbs = ref.instances[0].get("SpacingBetweenSlices")
        try:
            sbs = float(sbs) if sbs not in (None, "") else None
        except (TypeError, ValueError):
            sbs = None
        positions = list(stack_geometry(ref.slices, ref.series_instance_uid, spacing_between_slices=sbs).positions_along_normal_mm)
    return SeriesOnDisk(metadata=ref.metadata, ref=ref, slice_positions_mm=positions,
                        series_instance_uid=ref.series_instance_uid)


def load_series_volume(series: SeriesOnDisk) -> Volume:
    """Pixels of the series as a Volume (rescaled: HU for CT)."""
    return load_series(series.ref)
