"""Small chest and head CT phantoms with known noise, written as real DICOM series (pydicom), for the
protocol tests. Each phantom is conformant to its protocol by default; a test changes one thing
(a header value, a slice, the noise, the coverage) and expects exactly that criterion to be flagged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from MedImgAILib.volume import Volume, affine_from_geometry

#: header values of a conformant LDCT screening series
LDCT_HEADER: dict[str, Any] = {
    "Modality": "CT",
    "BodyPartExamined": "CHEST",
    "SeriesDescription": "LDCT lung screening 1.0",
    "ProtocolName": "Lung screening low dose",
    "KVP": 120,
    "CTDIvol": 1.8,
    "SpiralPitchFactor": 1.0,
    "ConvolutionKernel": "STANDARD",
    "Manufacturer": "PhantomWorks",
    "ManufacturerModelName": "Synthetic-64",
    "SliceThickness": 1.0,
}


def chest_hu(noise_hu: float, nk: int = 40, n: int = 320, pix: float = 0.9, dz: float = 1.0,
             lung_slices: tuple[float, float] = (4, 36), seed: int = 0, shift_from_k: int | None = None,
             shift_mm: float = 0.0) -> np.ndarray:
    """[k, j, i] HU: air -1000 outside an elliptical body (fat rim -100 HU, soft tissue 40 HU) holding
    two ellipsoidal lungs (-850 HU) that start and end inside the scanned range, plus white Gaussian
    noise of SD ``noise_hu``. ``shift_from_k``: slices from there on are shifted by ``shift_mm``
    (a patient movement step)."""
    rng = np.random.default_rng(seed)
    j, i = np.mgrid[0:n, 0:n].astype(np.float32)
    y, x = (j - n / 2) * pix, (i - n / 2) * pix
    out = np.empty((nk, n, n), np.float32)
    zc = (lung_slices[0] + lung_slices[1]) / 2 * dz
    zr = (lung_slices[1] - lung_slices[0]) / 2 * dz
    for k in range(nk):
        xs = x - (shift_mm if shift_from_k is not None and k >= shift_from_k else 0.0)
        z = k * dz
        a = np.full((n, n), -1000.0, np.float32)
        body = (xs / 135) ** 2 + (y / 95) ** 2 <= 1
        a[body] = -100.0
        a[(xs / 125) ** 2 + (y / 85) ** 2 <= 1] = 40.0
        for cx in (-60.0, 60.0):
            t = 1 - ((z - zc) / zr) ** 2
            if t > 0:
                a[((xs - cx) / 45) ** 2 + ((y + 5) / 60) ** 2 <= t] = -850.0
        out[k] = a
    out += rng.normal(0.0, noise_hu, out.shape).astype(np.float32)
    return out


def volume_of(hu: np.ndarray, pix: float = 0.9, dz: float = 1.0) -> Volume:
    return Volume(array=hu, affine=affine_from_geometry((0.0, 0.0, 0.0), (pix, pix, dz), np.eye(3)), modality="CT")


def write_ct_series(hu: np.ndarray, folder: Path, pix: float = 0.9, dz: float = 1.0, positions_z: Iterable[float] | None = None,
                    header: dict[str, Any] | None = None, drop: Iterable[str] = ()) -> Path:
    """Write ``hu`` [k, j, i] as single-frame CT Image Storage files (int16, intercept -1024)."""
    folder.mkdir(parents=True, exist_ok=True)
    hdr = dict(LDCT_HEADER)
    hdr.update(header or {})
    nk, nj, ni = hu.shape
    zs = list(positions_z) if positions_z is not None else [k * dz for k in range(nk)]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    stored = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16)
    for k in range(nk):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName = "PHANTOM", "Phantom^Chest"
        ds.StudyDate = dt.date(2026, 11, 29).strftime("%Y%m%d")
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-(ni / 2) * pix, -(nj / 2) * pix, float(zs[k])]
        ds.PixelSpacing = [pix, pix]
        ds.Rows, ds.Columns = nj, ni
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        for key, val in hdr.items():
            setattr(ds, key, val)
        for key in drop:
            if key in ds:
                delattr(ds, key)
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return folder
