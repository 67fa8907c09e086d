"""Reading a T1 for hippodeep: a NIfTI file (research use) or a DICOM series (a folder, or one file
of it). Both give a ``Volume`` (``[k, j, i]``, IJK->LPS); nothing downstream knows which it was.

NIfTI: the published method uses the **qform** and ignores the sform, even a valid one (SPEC.md 5.1);
a file with neither code set is refused. DICOM: the project's series loader
(``MedImgAILib.dicom.load_volume``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import DicomInputError, MedImgAIError
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
            log.info("the NIfTI sform differs from its qform; using the qform, as the original method does")
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
    """A DICOM folder, or one file of a series (then the whole series in its folder), through the
    project's loader (geometry checks, metadata, source UIDs)."""
    import pydicom

    from ...dicom import load_volume

    if path.is_file():
        if series_instance_uid is None:
            try:
                series_instance_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
            except Exception as exc:
                raise DicomInputError(f"{path} is neither a NIfTI file nor a readable DICOM image file: {exc}") from exc
        return load_volume(path.parent, series_instance_uid)
    return load_volume(path, series_instance_uid)
