"""Analytic ellipsoids voxelized with partial volume (5x5x5 supersampling per voxel), for measurement
tests with exact truth. The HU of a voxel is background + occupancy * (lesion - background), as a CT
scanner's partial-volume averaging would give."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedImgAILib.volume import Volume, affine_from_geometry


@dataclass
class Ellipsoid:
    center_lps: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]  # along the rotated x, y, z
    hu: float = 30.0
    rotation_z_rad: float = 0.0  # rotation about the z (axial-normal) axis
    supersample: int = 5  # sub-samples per voxel edge (1 = no partial volume, for large anatomy)

    def rotation(self) -> np.ndarray:
        c, s = np.cos(self.rotation_z_rad), np.sin(self.rotation_z_rad)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    @property
    def volume_mm3(self) -> float:
        return 4.0 / 3.0 * np.pi * float(np.prod(self.semi_axes_mm))

    def axial_section_diameters(self, z_lps: float) -> tuple[float, float]:
        """(long, short) of the axial cross-section at z (exact for rotations about z)."""
        a, b, c = self.semi_axes_mm
        dz = z_lps - self.center_lps[2]
        s = np.sqrt(max(0.0, 1.0 - (dz / c) ** 2))
        return 2 * max(a, b) * s, 2 * min(a, b) * s


def occupancy(e: Ellipsoid, affine: np.ndarray, shape_kji: tuple[int, int, int], ss: int = 5) -> np.ndarray:
    """Fraction of each voxel inside the ellipsoid, by ss^3 sub-samples. Evaluated on the bounding
    box of the ellipsoid only (fast)."""
    inv = np.linalg.inv(affine)
    r = max(e.semi_axes_mm) + 2.0
    corners = np.array([[e.center_lps[0] + dx, e.center_lps[1] + dy, e.center_lps[2] + dz, 1.0]
                        for dx in (-r, r) for dy in (-r, r) for dz in (-r, r)])
    ijk = (corners @ inv.T)[:, :3]
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, np.array(shape_kji[::-1]))
    out = np.zeros(shape_kji, dtype=np.float32)
    ii, jj, kk = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    R = e.rotation()
    semi = np.asarray(e.semi_axes_mm)
    acc = np.zeros(ii.shape, dtype=np.float32)
    for a in offs:
        for b in offs:
            for c in offs:
                p = np.stack([ii + a, jj + b, kk + c], -1) @ affine[:3, :3].T + affine[:3, 3]
                q = (p - np.asarray(e.center_lps)) @ R  # into the ellipsoid's own frame
                acc += (((q / semi) ** 2).sum(-1) <= 1.0)
    acc /= ss**3
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = acc.transpose(2, 1, 0)
    return out


def lung_image(
    shapes: list[Ellipsoid],
    spacing: tuple[float, float, float] = (0.7, 0.7, 1.25),
    shape_kji: tuple[int, int, int] = (40, 72, 72),
    origin: tuple[float, float, float] = (-25.0, -25.0, -25.0),
    background_hu: float = -850.0,
    direction: np.ndarray | None = None,
) -> Volume:
    aff = affine_from_geometry(origin, spacing, np.eye(3) if direction is None else direction)
    hu = np.full(shape_kji, background_hu, dtype=np.float32)
    for e in shapes:
        occ = occupancy(e, aff, shape_kji, ss=e.supersample)
        hu += occ * (e.hu - hu) * (occ > 0)
    return Volume(array=hu, affine=aff, series_instance_uid="1.2.3.4", modality="CT")


def halfway_mask(image: Volume, lesion_hu: float, background_hu: float = -850.0) -> Volume:
    """The model-independent segmentation: threshold at the half-way HU."""
    return image.with_array((image.array > (lesion_hu + background_hu) / 2.0).astype(np.uint8))


def load_ct_series(paths) -> tuple[Volume, list]:
    """A minimal reader for the tests' real single-frame CT series (the dicom area owns the real
    loader): sorted along the slice normal, HU via the rescale, source UIDs per slice. Returns the
    Volume and the pydicom datasets in the Volume's k order."""
    import pydicom

    dss = [pydicom.dcmread(str(p)) for p in paths]
    iop = np.asarray(dss[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=np.float64))))
    pos = [np.asarray(d.ImagePositionPatient, dtype=np.float64) for d in dss]
    dz = float(np.dot(normal, pos[1] - pos[0])) if len(pos) > 1 else float(dss[0].SliceThickness)
    row_sp, col_sp = (float(x) for x in dss[0].PixelSpacing)
    aff = affine_from_geometry(pos[0], (col_sp, row_sp, dz), np.stack([iop[:3], iop[3:], normal], axis=1))
    arr = np.stack([d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
                    for d in dss]).astype(np.float32)
    vol = Volume(
        array=arr, affine=aff, series_instance_uid=dss[0].SeriesInstanceUID,
        study_instance_uid=dss[0].StudyInstanceUID, frame_of_reference_uid=dss[0].FrameOfReferenceUID,
        modality=dss[0].Modality, source_sop_instance_uids=[d.SOPInstanceUID for d in dss],
        source_frame_numbers=[1] * len(dss), source_sop_class_uid=dss[0].SOPClassUID,
    )
    return vol, dss


def write_ct_series(volume: Volume, folder, *, patient_name: str = "Phantom^Analytic", study_uid: str = "",
                    series_uid: str = "", frame_uid: str = "") -> list:
    """Write ``volume`` (HU) as a single-frame CT series and record the source UIDs in it; returns
    the file paths in k order. Enough of the CT Image IOD for SEG/SR/SC creation and readers."""
    from pathlib import Path

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    d = volume.direction
    sx, sy, _sz = volume.spacing
    paths, uids = [], []
    for k in range(volume.array.shape[0]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, "PHANTOM-1", "19600101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20260101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", "A1"
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, 2
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "MedImgAI test"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in volume.ijk_to_lps([0, 0, k])]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{volume.spacing[2]:.6f}"
        ds.Rows, ds.Columns = volume.array.shape[1], volume.array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.PixelData = np.round(volume.array[k]).astype(np.int16).tobytes()
        p = folder / f"ct_{k:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
        uids.append(ds.SOPInstanceUID)
    volume.series_instance_uid, volume.study_instance_uid = series_uid, study_uid
    volume.frame_of_reference_uid, volume.modality = frame_uid, "CT"
    volume.source_sop_instance_uids, volume.source_frame_numbers = uids, [1] * len(uids)
    volume.source_sop_class_uid = CTImageStorage
    return paths
