"""Write a ``Volume`` as a classic MR Image Storage series (one file per slice).

What it is for: turning a research MR volume (NIfTI) into the DICOM series a PACS would hold, in the
slice orientation an MR scanner would produce (axial, sagittal or coronal 3D acquisitions), so the
DICOM path of a model can be tested against its NIfTI path on the same voxels. Reslicing is an exact
axis permutation/flip (SimpleITK ``DICOMOrient``): no interpolation, so both paths see the same values.

The files are valid MR Image Storage instances (dciodvfy-clean): patient/study/series/frame-of-reference/
equipment/image-plane/image-pixel/MR-image modules, with acquisition parameters the caller gives (a T1
MPRAGE by default). Images are marked DERIVED\\SECONDARY: they are a conversion, not a scanner's output.
The series is written into a temporary folder beside ``out_dir`` and renamed when complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..errors import MedImgAIError
from ..volume import Volume

#: DICOM orientation codes (letter = direction in which i, j, k increase), as scanners slice a head
SLICE_ORIENTATIONS = {
    "axial": "LPS",  # rows run right->left, columns anterior->posterior, slices inferior->superior
    "sagittal": "PIL",  # rows anterior->posterior, columns superior->inferior, slices right->left
    "coronal": "LIP",  # rows right->left, columns superior->inferior, slices anterior->posterior
}


@dataclass
class MRAcquisition:
    """What the MR Image module needs; defaults describe a 3 T 3D T1 MPRAGE."""

    series_description: str = "T1 MPRAGE 3D"
    protocol_name: str = "T1 MPRAGE 3D"
    scanning_sequence: list[str] = field(default_factory=lambda: ["GR", "IR"])
    sequence_variant: list[str] = field(default_factory=lambda: ["SK", "SP", "MP"])
    scan_options: list[str] = field(default_factory=list)  # type 2; IR is a sequence, not an option
    sequence_name: str = "tfl3d1"
    repetition_time_ms: float = 2300.0
    echo_time_ms: float = 2.98
    inversion_time_ms: Optional[float] = 900.0
    flip_angle_deg: float = 9.0
    echo_train_length: int = 1
    magnetic_field_strength_t: float = 3.0
    body_part_examined: str = "HEAD"


class MRSeriesWriteError(MedImgAIError):
    kind = "dicom-write"


def reslice(volume: Volume, orientation: str) -> Volume:
    """The same voxels with axes permuted/flipped so that k is the slice axis of ``orientation``
    (``axial`` / ``sagittal`` / ``coronal``, or a DICOM code such as ``"PIL"``)."""
    code = SLICE_ORIENTATIONS.get(orientation.lower(), orientation.upper())
    import SimpleITK as sitk

    img = sitk.DICOMOrient(volume.to_sitk(), code)
    out = Volume.from_sitk(img)
    # provenance that still holds; per-slice source UIDs do not (the slices are new)
    return Volume(
        array=np.ascontiguousarray(out.array),
        affine=out.affine,
        study_instance_uid=volume.study_instance_uid,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        modality=volume.modality,
        metadata=volume.metadata,
    )


def _ds_str(x: float) -> str:
    """DS values fit 16 characters."""
    s = f"{x:.10g}"
    if len(s) > 16:
        s = f"{x:.8g}"
    return s


def _to_uint16(array: np.ndarray) -> tuple[np.ndarray, str]:
    """Stored values: as they are when they are integers in 0..65535, else scaled linearly (noted)."""
    a = np.asarray(array)
    if np.issubdtype(a.dtype, np.integer) or np.array_equal(a, np.round(a)):
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 65535:
            return a.astype(np.uint16), ""
    lo, hi = float(np.min(a)), float(np.max(a))
    scale = 4095.0 / (hi - lo) if hi > lo else 1.0
    return np.round((a.astype(np.float64) - lo) * scale).astype(np.uint16), (
        f"intensities scaled linearly from [{lo:g}, {hi:g}] to [0, 4095]"
    )


def write_mr_series(
    volume: Volume,
    out_dir: str | os.PathLike[str],
    orientation: str = "axial",
    *,
    acquisition: Optional[MRAcquisition] = None,
    patient_name: str = "Anonymous^Research",
    patient_id: str = "RESEARCH-0001",
    study_instance_uid: Optional[str] = None,
    series_instance_uid: Optional[str] = None,
    frame_of_reference_uid: Optional[str] = None,
    series_number: int = 1,
    study_date: Optional[_dt.date] = None,
) -> list[Path]:
    """Write ``volume`` as an MR series into ``out_dir`` (created; must not exist or be empty).
    Returns the files in slice order (k = 0 first)."""
    acq = acquisition or MRAcquisition()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MRSeriesWriteError(f"{out_dir} is not empty; write an MR series into a new folder")
    vol = reslice(volume, orientation)
    pixels, scaling_note = _to_uint16(vol.array)
    nk, rows, cols = pixels.shape
    direction = vol.direction
    row_dir, col_dir = direction[:, 0], direction[:, 1]
    si, sj, sk = vol.spacing
    normal = np.cross(row_dir, col_dir)

    study_uid = study_instance_uid or volume.study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    for_uid = frame_of_reference_uid or volume.frame_of_reference_uid or generate_uid()
    when = _dt.datetime.now()
    sdate = (study_date or when.date()).strftime("%Y%m%d")
    stime = when.strftime("%H%M%S")
    window_center = float(pixels.max()) / 2.0
    window_width = max(1.0, float(pixels.max()))
    bits = max(8, int(pixels.max()).bit_length()) if pixels.size else 8
    bits = 16 if bits > 12 else 12

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    files: list[Path] = []
    try:
        for k in range(nk):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = sdate
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = stime
            ds.AccessionNumber = ""
            ds.Modality = "MR"
            ds.Manufacturer = "MedImgAI"
            ds.ManufacturerModelName = "mr_series_writer"
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "MR head"
            ds.SeriesDescription = acq.series_description
            ds.DerivationDescription = "Converted from a volume file by MedImgAILib" + (
                f"; {scaling_note}" if scaling_note else ""
            )
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.BodyPartExamined = acq.body_part_examined
            ds.ScanningSequence = acq.scanning_sequence
            ds.SequenceVariant = acq.sequence_variant
            ds.ScanOptions = acq.scan_options or ""
            ds.MRAcquisitionType = "3D"
            ds.SequenceName = acq.sequence_name
            ds.SliceThickness = _ds_str(sk)
            ds.RepetitionTime = _ds_str(acq.repetition_time_ms)
            ds.EchoTime = _ds_str(acq.echo_time_ms)
            if acq.inversion_time_ms is not None:
                ds.InversionTime = _ds_str(acq.inversion_time_ms)
            ds.EchoTrainLength = acq.echo_train_length
            ds.MagneticFieldStrength = _ds_str(acq.magnetic_field_strength_t)
            ds.SpacingBetweenSlices = _ds_str(sk)
            ds.FlipAngle = _ds_str(acq.flip_angle_deg)
            ds.ProtocolName = acq.protocol_name
            ds.PatientPosition = "HFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = series_number
            ds.InstanceNumber = k + 1
            pos = vol.ijk_to_lps([0.0, 0.0, float(k)])
            ds.ImagePositionPatient = [_ds_str(float(x)) for x in pos]
            ds.ImageOrientationPatient = [_ds_str(float(x)) for x in (*row_dir, *col_dir)]
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds_str(float(np.dot(pos, normal)))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = rows
            ds.Columns = cols
            # PixelSpacing is (between rows, between columns) = (j spacing, i spacing)
            ds.PixelSpacing = [_ds_str(sj), _ds_str(si)]
            ds.BitsAllocated = 16
            ds.BitsStored = bits
            ds.HighBit = bits - 1
            ds.PixelRepresentation = 0
            ds.WindowCenter = _ds_str(window_center)
            ds.WindowWidth = _ds_str(window_width)
            ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
            path = tmp / f"MR{k + 1:05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(out_dir / path.name)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files
