"""Test studies for the PACS suite, built from real files where they exist.

``multi_series_study``: the three real GE CT slices of ../shared/data/real/ct-3slice with their real
liver SEG (same study), a second synthetic CT series, a Comprehensive 3D SR (highdicom, TID 1500)
and an Enhanced SR referencing the CT, all in one study.
``ct_series``: a synthetic N-slice CT (pydicom) for throughput benchmarks.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_series(
    out: Path, n: int, size: int = 512, *, study_uid: str | None = None, patient_id: str = "BENCH001",
    series_number: int = 1, description: str = "synthetic CT", seed: int = 0,
) -> list[Path]:
    """``n`` CT slices (int16, ``size``x``size``), 1.25 mm apart, explicit VR LE."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", patient_id, "19600101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240115", "101500", "ACC" + patient_id, "1"
        ds.StudyDescription, ds.SeriesDescription = "CT CHEST", description
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.ImagePositionPatient = [-size * 0.35, -size * 0.35, -200.0 + 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.25
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        img = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, (size, size), dtype=np.int16)
        ds.PixelData = img.tobytes()
        p = out / f"ct{series_number:02d}_{k:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def _sr_objects(ct: list[Dataset], out: Path) -> list[Path]:
    import highdicom as hd
    from highdicom.sr import (
        Comprehensive3DSR, EnhancedSR, MeasurementReport, ObservationContext, ObserverContext,
        PersonObserverIdentifyingAttributes,
    )
    from pydicom.sr.codedict import codes

    observer = ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=PersonObserverIdentifyingAttributes(name="Test^Reader"),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="finding 1"),
                measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=5.0, unit=codes.UCUM.Millimeter)],
            )
        ],
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence = []
    for ds in ct:  # the real GE files carry an empty SpecificCharacterSet, which highdicom refuses
        ds = copy.deepcopy(ds)
        ds.SpecificCharacterSet = "ISO_IR 100"
        evidence.append(ds)
    paths = []
    for number, cls in ((90, Comprehensive3DSR), (91, EnhancedSR)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the real file's single-component name
            sr = cls(
                evidence=evidence, content=report[0], series_number=number, series_instance_uid=hd.UID(),
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedImgAI tests",
                series_description=f"{cls.__name__} test report",
            )
        p = out / f"sr_{number}.dcm"
        sr.save_as(p)
        paths.append(p)
    return paths


def multi_series_study(ct3slice_dir: Path, out: Path) -> dict[str, object]:
    """Real CT (3 slices) + real SEG + synthetic CT series (8 slices) + Comprehensive 3D SR + Enhanced SR,
    one study. Returns {"files": [...], "study_uid": ..., "series": {description: uid}}."""
    out.mkdir(parents=True, exist_ok=True)
    files = [ct3slice_dir / f"{i:02d}.dcm" for i in (1, 2, 3)] + [ct3slice_dir / "liver_seg.dcm"]
    ct = [pydicom.dcmread(f) for f in files[:3]]
    study_uid = str(ct[0].StudyInstanceUID)
    synth = ct_series(out / "ct2", 8, size=64, study_uid=study_uid, patient_id=str(ct[0].PatientID),
                      series_number=7, description="synthetic thin CT")
    # The synthetic series must carry the real study's patient/study attributes to be one study.
    for p in synth:
        ds = pydicom.dcmread(p)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName"):
            if kw in ct[0]:
                setattr(ds, kw, copy.deepcopy(ct[0].data_element(kw).value))
        ds.save_as(p, enforce_file_format=True)
    files += synth + _sr_objects(ct, out)
    series: dict[str, str] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        series.setdefault(str(ds.Modality) + ":" + str(ds.get("SeriesDescription", ds.SeriesNumber)), str(ds.SeriesInstanceUID))
    return {"files": files, "study_uid": study_uid, "series": series}
