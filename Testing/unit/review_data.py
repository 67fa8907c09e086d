"""A small chest-like CT, the AI result ``medimgai analyze`` would give for it, and its analysis folder:
the material of the review-session tests and of the documentation screenshots (docs/make_screenshots.py).

Three solid nodules: the "model" found F1 (~9 mm, Lung-RADS 4A) and F2 (~5 mm, Lung-RADS 2) and
missed a ~7 mm one that the radiologist adds by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedImgAILib.results import AnalysisResult, ModelRef
from MedImgAILib.volume import Volume, affine_from_geometry

SPACING = (0.7, 0.7, 1.0)  # i, j, k (mm)
SHAPE = (24, 80, 80)  # k, j, i
ORIGIN_LPS = (-28.0, -30.0, -120.0)
#: truth label -> (centre ijk, radius mm); label 3 is the nodule the model missed
LESIONS = {1: ((26, 38, 12), 4.6), 2: ((56, 30, 8), 2.6), 3: ((20, 58, 12), 3.5)}
CONTEXT = {"screening": True, "exam": "baseline"}
STUDY_UID = "1.2.826.0.1.3680043.8.498.10001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.10002"
FRAME_UID = "1.2.826.0.1.3680043.8.498.10003"


def small_chest_ct(seed: int = 0) -> tuple[Volume, np.ndarray]:
    """(CT volume in HU, truth label map): body, two lungs, three solid nodules, mild noise."""
    kk, jj, ii = np.indices(SHAPE)
    arr = np.full(SHAPE, -1000.0)
    body = ((ii - 40) / 38.0) ** 2 + ((jj - 40) / 36.0) ** 2 <= 1.0
    arr[body] = 40.0
    for ci in (24, 56):
        arr[((ii - ci) / 14.0) ** 2 + ((jj - 40) / 28.0) ** 2 <= 1.0] = -850.0
    truth = np.zeros(SHAPE, np.uint8)
    for value, ((ci, cj, ck), r) in LESIONS.items():
        inside = ((ii - ci) * SPACING[0]) ** 2 + ((jj - cj) * SPACING[1]) ** 2 + ((kk - ck) * SPACING[2]) ** 2 <= r * r
        arr[inside] = 40.0
        truth[inside] = value
    arr += np.random.default_rng(seed).normal(0.0, 12.0, SHAPE)
    vol = Volume(
        array=np.round(arr).astype(np.int16),
        affine=affine_from_geometry(ORIGIN_LPS, SPACING, np.eye(3)),
        modality="CT", series_instance_uid=SERIES_UID, study_instance_uid=STUDY_UID, frame_of_reference_uid=FRAME_UID,
        source_sop_instance_uids=[f"{SERIES_UID}.{k + 1}" for k in range(SHAPE[0])],
        source_frame_numbers=[1] * SHAPE[0], source_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    )
    return vol, truth


def nodule_label_spec():
    from MedImgAILib.findings import NODULE, LabelSpec

    return LabelSpec(value=1, name="nodule", finding_code=NODULE, is_lung_lesion=True)


def ai_result(vol: Volume, truth: np.ndarray) -> tuple[AnalysisResult, np.ndarray]:
    """What the pipeline reports when the model segments nodules 1 and 2: findings measured by the
    findings stage, categorized by Lung-RADS v2022 (screening baseline)."""
    from MedImgAILib.findings import extract_findings
    from MedImgAILib.rules import evaluate, make_context

    seen = np.isin(truth, (1, 2)).astype(np.uint8)
    findings, instance = extract_findings(vol.with_array(seen), vol, label_specs=[nodule_label_spec()],
                                          return_instance_map=True)
    for n, f in enumerate(findings, start=1):
        f.instance_value = n
    context = make_context(**CONTEXT)
    result = AnalysisResult(study_instance_uid=vol.study_instance_uid, series_instance_uid=vol.series_instance_uid,
                            model=ModelRef(id="ct-lung-nodule", version="1.0.0"), findings=findings)
    result = evaluate(result.findings, context, "lung-rads").apply_to(result, context)
    return result, instance.astype(np.int32)


def write_ct_series(vol: Volume, folder: Path) -> Path:
    """The volume as a CT Image Storage series (one file per slice), as a PACS would deliver it."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    folder.mkdir(parents=True, exist_ok=True)
    nk, nj, ni = vol.array.shape
    for k in range(nk):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = vol.source_sop_instance_uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(folder / f"CT{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, vol.source_sop_instance_uids[k]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = vol.study_instance_uid, vol.series_instance_uid
        ds.FrameOfReferenceUID = vol.frame_of_reference_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Review", "PHANTOM-REVIEW", "19600101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261129", "080000", "1", "ACC-REVIEW"
        ds.ReferringPhysicianName, ds.StudyDescription = "", "CT chest low-dose screening"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, k + 1
        ds.Manufacturer = "MedImgAI test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(x) for x in vol.ijk_to_lps([0, 0, k])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(vol.spacing[1]), float(vol.spacing[0])]
        ds.SliceThickness = float(vol.spacing[2])
        ds.KVP, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 120, 0, 1, "HU"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = nj, ni, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(vol.array[k].astype(np.int16)).tobytes()
        ds.save_as(folder / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def write_analysis_dir(out: Path, source_dir: Path, instance: np.ndarray, result: AnalysisResult) -> Path:
    """An analysis output folder as ``medimgai analyze`` leaves it (findings.json + instance map)."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    vol, _ = small_chest_ct()
    nib.save(vol.with_array(instance.astype(np.uint16)).to_nifti(), str(out / "instance_map.nii.gz"))
    r = result.model_copy(deep=True)
    r.outputs.instance_map = "instance_map.nii.gz"
    r.outputs.source_dir = str(source_dir)
    r.write(out / "findings.json")
    return out
