"""Write small DICOM series with pydicom whose geometry the tests choose (duplicates, tilt, oblique,
mixed sizes, enhanced multi-frame, rescale variants). Used by the dicom tests and the load benchmark.

Everything here is what a scanner would write for the attributes the loader reads; the pixel values are
a known function of (i, j, k) so tests can check that each voxel landed where it should.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class SynthSeries:
    folder: Path
    series_uid: str
    study_uid: str
    files: list[Path]
    #: HU (rescaled) values [k, j, i] in slice order along increasing normal distance
    values: np.ndarray
    positions: list[tuple[float, float, float]]  # per written slice, in file order


def _base(modality: str, study_uid: str, series_uid: str, sop_class: str, ts: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName = "Synthetic^Test"
    ds.PatientID = "SYNTH-001"
    ds.PatientSex = "O"
    ds.PatientAge = "060Y"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "A1"
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.SeriesDescription = "synthetic"
    ds.Manufacturer = "MedImgAI test"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def pattern(nx: int, ny: int, nz: int, seed: int = 0) -> np.ndarray:
    """Distinct HU-like values per voxel: a ramp in i, j and k plus noise, within [-1024, 3000]."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    v = -1000 + 7 * i + 3 * j + 100 * k + rng.integers(0, 5, size=i.shape)
    return np.clip(v, -1024, 3000).astype(np.int32)


def write_series(
    folder: Path | str,
    *,
    size: tuple[int, int, int] = (8, 6, 5),
    spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
    origin: Sequence[float] = (-100.0, -90.0, 30.0),
    row: Sequence[float] = (1.0, 0.0, 0.0),
    col: Sequence[float] = (0.0, 1.0, 0.0),
    positions: Sequence[Sequence[float]] | None = None,
    tilt_deg: float = 0.0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    unsigned: bool = False,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    reverse_instance_numbers: bool = True,
    slice_thickness: float | None = None,
    values: np.ndarray | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    name_prefix: str = "",
    seed: int = 0,
    with_pixels: bool = True,
) -> SynthSeries:
    """One single-frame file per slice. ``values`` are the rescaled values [k, j, i] in the order of
    ``positions`` (default: origin + k * spacing along the normal, tilted by ``tilt_deg`` about the row
    axis the way a CT gantry tilt shifts successive slices along the column direction)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = size
    r, c = np.asarray(row, float), np.asarray(col, float)
    n = np.cross(r, c)
    if positions is None:
        shift = np.tan(np.radians(tilt_deg)) * spacing[2]
        positions = [tuple(np.asarray(origin) + k * spacing[2] * n + k * shift * c) for k in range(nz)]
    nz = len(positions)
    if values is None:
        values = pattern(nx, ny, nz, seed)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    files = []
    for k, pos in enumerate(positions):
        ds = _base(modality, study_uid, series_uid, CT_IMAGE if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4", ts=transfer_syntax)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = (nz - k) if reverse_instance_numbers else (k + 1)
        ds.ImagePositionPatient = [float(x) for x in pos]
        ds.ImageOrientationPatient = [float(x) for x in (*r, *c)]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = slice_thickness if slice_thickness is not None else spacing[2]
        if tilt_deg:
            ds.GantryDetectorTilt = tilt_deg
        ds.Rows, ds.Columns = ny, nx
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "HU"
        stored = np.round((values[k] - intercept) / slope)
        ds.PixelRepresentation = 0 if unsigned else 1
        stored = stored.astype(np.uint16 if unsigned else np.int16)
        if with_pixels:
            ds.PixelData = stored.tobytes()
        if transfer_syntax == RLELossless:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(RLELossless, stored)
        p = folder / f"{name_prefix}{k:04d}"
        ds.save_as(p, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
        files.append(p)
    return SynthSeries(folder, series_uid, study_uid, files, np.asarray(values), [tuple(map(float, p)) for p in positions])


def write_enhanced_ct(
    path: Path | str,
    *,
    size: tuple[int, int, int] = (8, 6, 5),
    spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
    origin: Sequence[float] = (-100.0, -90.0, 30.0),
    frame_order: Sequence[int] | None = None,
    slopes: Sequence[float] | None = None,
    seed: int = 0,
) -> SynthSeries:
    """One Enhanced CT Image object; frames written in ``frame_order`` (indices of slices along the
    normal), per-frame positions and per-frame rescale in the functional groups."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = size
    values = pattern(nx, ny, nz, seed)
    frame_order = list(frame_order) if frame_order is not None else list(range(nz))
    slopes = list(slopes) if slopes is not None else [1.0] * nz
    study_uid, series_uid = generate_uid(), generate_uid()
    ds = _base("CT", study_uid, series_uid, ENHANCED_CT, ExplicitVRLittleEndian)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns = ny, nx
    ds.NumberOfFrames = nz
    ds.PixelRepresentation = 1
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [spacing[1], spacing[0]]
    pm.SliceThickness = spacing[2]
    shared.PixelMeasuresSequence = DicomSequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = DicomSequence([po])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    frames = []
    positions = []
    for k in frame_order:
        fg = Dataset()
        pp = Dataset()
        pos = (origin[0], origin[1], origin[2] + k * spacing[2])
        pp.ImagePositionPatient = list(pos)
        positions.append(pos)
        fg.PlanePositionSequence = DicomSequence([pp])
        pv = Dataset()
        pv.RescaleSlope = slopes[k]
        pv.RescaleIntercept = -1024.0
        pv.RescaleType = "HU"
        fg.PixelValueTransformationSequence = DicomSequence([pv])
        per_frame.append(fg)
        frames.append(np.round((values[k] + 1024.0) / slopes[k]).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return SynthSeries(path.parent, series_uid, study_uid, [path], values, positions)
