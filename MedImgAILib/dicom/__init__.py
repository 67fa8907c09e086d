"""DICOM input: find series in folders, load them as ``Volume``s, normalize their metadata, index them.

``scan(path)`` lists the series under a folder tree (header-only reads); ``load_volume(path, series_uid)``
loads one as a ``Volume`` (pixels in rescaled units, IJK->LPS affine, source UIDs, metadata, warnings);
``StudyIndex`` (``MedImgAILib.dicom.index``) keeps a queryable record of every instance seen.
"""

from .load import load_series, load_volume
from .metadata import SeriesMetadata, extract_metadata
from .scan import InstanceHeader, ScanResult, SeriesRef, SliceHeader, read_header, scan, scan_tree

__all__ = [
    "InstanceHeader",
    "ScanResult",
    "SeriesMetadata",
    "SeriesRef",
    "SliceHeader",
    "extract_metadata",
    "load_series",
    "load_volume",
    "read_header",
    "scan",
    "scan_tree",
]
