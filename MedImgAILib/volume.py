"""``Volume``: pixels plus the geometry that places them in the patient.

Conventions (DESIGN.md): DICOM patient LPS millimetres. ``array`` is indexed ``[k, j, i]`` (slice, row,
column), the order SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` use, so arrays
pass between them without transposes. ``affine`` maps the homogeneous voxel index ``(i, j, k, 1)`` to
LPS mm: its 3x3 block is ``direction @ diag(spacing)`` and its last column the centre of voxel (0,0,0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .dicom.metadata import SeriesMetadata


def affine_from_geometry(
    origin_lps: Sequence[float], spacing: Sequence[float], direction: np.ndarray | Sequence[float]
) -> np.ndarray:
    """4x4 IJK->LPS from origin (centre of the first voxel), spacing (i, j, k) and a direction whose
    columns are the unit i, j, k axes in LPS."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:3, 3] = np.asarray(origin_lps, dtype=np.float64)
    return a


@dataclass
class Volume:
    """A 3D image on a regular grid in LPS. Multi-component data are not handled here."""

    array: np.ndarray  # [k, j, i]
    affine: np.ndarray  # 4x4, (i, j, k, 1) -> LPS mm
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    modality: str = ""
    #: SOP Instance UID of the source of each k slice; for a multi-frame object, the same UID per frame
    source_sop_instance_uids: list[str] = field(default_factory=list)
    #: 1-based frame number within the source instance per k slice (1 for single-frame files)
    source_frame_numbers: list[int] = field(default_factory=list)
    source_sop_class_uid: str = ""
    metadata: "SeriesMetadata | None" = None
    #: geometry or content problems that were detected and accepted (uneven spacing, tilt, ...)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array [k, j, i], got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    # --- geometry ---------------------------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        nk, nj, ni = self.array.shape
        return ni, nj, nk

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(s[0]), float(s[1]), float(s[2])

    @property
    def origin(self) -> tuple[float, float, float]:
        o = self.affine[:3, 3]
        return float(o[0]), float(o[1]), float(o[2])

    @property
    def direction(self) -> np.ndarray:
        """3x3, columns are the unit i, j, k axes in LPS."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def ijk_to_lps(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray:
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_ijk(self, lps: np.ndarray | Sequence[float]) -> np.ndarray:
        p = np.asarray(lps, dtype=np.float64)
        return (p - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """Same grid and provenance, other voxels (a label map, a probability map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match volume {self.array.shape}")
        kw = dict(
            affine=self.affine.copy(),
            series_instance_uid=self.series_instance_uid,
            study_instance_uid=self.study_instance_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            modality=self.modality,
            source_sop_instance_uids=list(self.source_sop_instance_uids),
            source_frame_numbers=list(self.source_frame_numbers),
            source_sop_class_uid=self.source_sop_class_uid,
            metadata=self.metadata,
            warnings=list(self.warnings),
        )
        kw.update(changes)
        return Volume(array=array, **kw)

    # --- interop ----------------------------------------------------------------------------------
    def to_sitk(self):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(float(x) for x in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, image, **kw: Any) -> "Volume":
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(image)
        aff = affine_from_geometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
        return cls(array=arr, affine=aff, **kw)

    def to_nifti(self):
        """nibabel image; NIfTI is RAS, so the LPS affine flips x and y here and only here."""
        import nibabel as nib

        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine
        # [k, j, i] C order transposed is [i, j, k] in Fortran order, which is NIfTI's own on-disk
        # order: nibabel writes the view as it is (no copy: a 512x512x300 map saves 4x faster)
        return nib.Nifti1Image(self.array.transpose(2, 1, 0), ras)

    @classmethod
    def from_nifti(cls, image, **kw: Any) -> "Volume":
        arr = np.asanyarray(image.dataobj)
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise ValueError(f"NIfTI image has {arr.ndim} dimensions; a 3D image is needed")
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
        return cls(array=np.ascontiguousarray(arr.transpose(2, 1, 0)), affine=lps, **kw)
