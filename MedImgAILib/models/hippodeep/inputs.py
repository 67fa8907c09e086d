"""Reading a T1 for hippodeep: a NIfTI file (research use) or a DICOM series (a folder, or one file
of it). Both give a ``Volume`` (``[k, j, i]``, IJK->LPS); nothing downstream knows which it was.

NIfTI: the published method uses the **qform** and ignores the sform, even a valid one (SPEC.md 5.1);
a file with neither code set is refused. DICOM: the project's series loader
(``MedImgAILib.dicom.load_volume``) when it is installed, SimpleITK's series reader otherwise.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...errors import DicomInputError, MedImgAIError, NoSeriesFoundError
from ...volume import Volume

log = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".mnc")


class ImageInputError(MedImgAIError):
    """An image file that cannot be read as a 3D volume."""

    kind = "image-input"


def is_nifti_like(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(_NIFTI_SUFFIXES)


def load_t1(path: str | os.PathLike[str], series_instance_uid: Optional[str] = None) -> Volume:
    """A NIfTI/MGZ file, a DICOM folder or one DICOM file of a series -> ``Volume``."""
    p = Path(path)
    if not p.exists():
        raise ImageInputError(f"{p} does not exist")
    vol = load_nifti_qform(p) if is_nifti_like(p) else load_dicom_series(p, series_instance_uid)
    vol.extra.setdefault("source_path", str(p))  # for messages; never PHI (a path the user typed)
    return vol


# --------------------------------------------------------------------------------------------------
def load_nifti_qform(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds for a bad file
        raise ImageInputError(f"{path} cannot be read as NIfTI/MGZ: {exc}") from exc
    if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        hdr = img.header
        if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
            raise ImageInputError(
                f"{path}: the NIfTI header has neither qform_code nor sform_code set, so its orientation "
                f"is unknown; fix the header or convert again from the DICOM series"
            )
        affine_ras = img.get_qform()  # the quaternion matrix, whatever qform_code says (SPEC.md 5.1)
        if not np.allclose(img.get_sform(), affine_ras, atol=1e-4):
            log.info("%s: the sform differs from the qform; using the qform as the original method does", path.name)
    else:
        affine_ras = img.affine
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3:  # a time series: averaged over the last axis, as the original does
        data = data.mean(-1, dtype=np.float32)
    if data.ndim != 3:
        raise ImageInputError(f"{path} has {data.ndim} dimensions; a 3D image is needed")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    # [i, j, k] -> [k, j, i]; NIfTI data are Fortran-ordered, so this is the C-ordered same memory
    return Volume(array=np.ascontiguousarray(data.transpose(2, 1, 0)), affine=lps, modality="")


# --------------------------------------------------------------------------------------------------
def load_dicom_series(path: Path, series_instance_uid: Optional[str] = None) -> Volume:
    try:  # the project's loader (dicom stage) when it is there: full geometry checks and metadata
        from ...dicom import load_volume  # type: ignore[attr-defined]
    except ImportError:
        load_volume = None
    if load_volume is not None:
        try:
            return load_volume(path, series_instance_uid=series_instance_uid) if series_instance_uid else load_volume(path)
        except TypeError:
            return load_volume(path)
    return _load_dicom_sitk(path, series_instance_uid)


def _scan_headers(path: Path) -> list[tuple[Path, Any]]:
    """(file, header) for every readable DICOM image file in ``path`` (a folder, or a file's folder).
    Unreadable and non-image files are skipped: folders often hold DICOMDIRs, reports, stray files."""
    import pydicom

    folder = path if path.is_dir() else path.parent
    out = []
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)  # malformed neighbours are skipped, not reported one by one
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in sorted(folder.iterdir()):
                if not f.is_file():
                    continue
                try:
                    ds = pydicom.dcmread(f, stop_before_pixels=True)
                except Exception:  # anything unreadable is "not part of a series"
                    continue
                if "SeriesInstanceUID" in ds and "ImagePositionPatient" in ds and "Rows" in ds:
                    out.append((f, ds))
    finally:
        pydicom_log.setLevel(level)
    return out


def _load_dicom_sitk(path: Path, series_instance_uid: Optional[str]) -> Volume:
    import pydicom
    import SimpleITK as sitk

    from ...dicom.metadata import extract_metadata

    if path.is_file() and series_instance_uid is None:
        try:
            series_instance_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        except Exception as exc:
            raise DicomInputError(f"{path} is neither a NIfTI file nor a readable DICOM image file: {exc}") from exc
    headers = _scan_headers(path)
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    folder = path if path.is_dir() else path.parent
    if not by_series:
        raise NoSeriesFoundError(f"no DICOM image series found in {folder}")
    if series_instance_uid is None:
        if len(by_series) > 1:
            raise DicomInputError(
                f"{folder} holds {len(by_series)} series ({', '.join(sorted(by_series))}); name one with --series UID"
            )
        series_instance_uid = next(iter(by_series))
    if series_instance_uid not in by_series:
        raise NoSeriesFoundError(f"series {series_instance_uid} is not in {folder}")
    members = by_series[series_instance_uid]
    first = members[0][1]
    # order along the slice normal (instance numbers are not reliable)
    iop = np.array([float(x) for x in first.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    members.sort(key=lambda m: float(np.dot(normal, [float(x) for x in m[1].ImagePositionPatient])))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f, _ in members])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DicomInputError(f"series {series_instance_uid} in {folder} cannot be read as a volume: {exc}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomInputError(f"series {series_instance_uid} is not a single-component 3D image")
    return Volume.from_sitk(
        image,
        series_instance_uid=series_instance_uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in members],
        source_frame_numbers=[1] * len(members),
        source_sop_class_uid=str(first.get("SOPClassUID", "")),
        metadata=extract_metadata(first, number_of_instances=len(members)),
    )
