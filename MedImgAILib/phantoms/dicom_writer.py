"""CT Image Storage files for a rendered phantom: one file per slice, explicit VR little endian, int16
with RescaleSlope 1 / RescaleIntercept -1024, all Type 1 and 2 attributes of the CT Image IOD
(Patient, General Study, Patient Study, General Series, Frame of Reference, General Equipment,
General Acquisition, General Image, Image Plane, Image Pixel, CT Image, VOI LUT, SOP Common)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from .spec import PhantomSpec

INTERCEPT = -1024.0


@dataclass
class SeriesUIDs:
    study: str
    series: str
    frame_of_reference: str

    @classmethod
    def make(cls, spec: PhantomSpec, study_uid: str | None = None, frame_uid: str | None = None) -> "SeriesUIDs":
        if spec.deterministic_uids:
            src = [str(spec.patient_seed), spec.study.accession_number]
            study = study_uid or generate_uid(entropy_srcs=src + ["study"])
            frame = frame_uid or generate_uid(entropy_srcs=src + ["frame"])
            series = generate_uid(entropy_srcs=[study, str(spec.seed), spec.model_dump_json()])
        else:
            study = study_uid or generate_uid()
            frame = frame_uid or generate_uid()
            series = generate_uid()
        return cls(study, series, frame)


def _ds(v: float) -> str:
    """Decimal String with as many digits as fit (16 chars): geometry reads back exactly."""
    for digits in (12, 11, 10, 9, 8):
        text = f"{v:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{v:.6g}"


def _age(years: int) -> str:
    return f"{int(years):03d}Y"


def series_description(spec: PhantomSpec) -> str:
    if spec.study.series_description:
        return spec.study.series_description
    a = spec.acquisition
    return f"Chest {a.slice_thickness_mm:g}mm {a.kernel}"[:64]


def base_dataset(spec: PhantomSpec, uids: SeriesUIDs, rows: int, cols: int, pixel_spacing: float) -> Dataset:
    a, st = spec.acquisition, spec.study
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = st.study_date
    ds.SeriesDate = st.study_date
    ds.AcquisitionDate = st.study_date
    ds.ContentDate = st.study_date
    ds.StudyTime = st.study_time
    ds.SeriesTime = st.study_time
    ds.AcquisitionTime = st.study_time
    ds.ContentTime = st.study_time
    ds.AccessionNumber = st.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = a.manufacturer
    ds.InstitutionName = st.institution_name
    ds.ReferringPhysicianName = ""
    ds.StationName = a.station_name
    ds.StudyDescription = st.study_description
    if st.procedure_code:
        item = Dataset()
        item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = st.procedure_code
        ds.ProcedureCodeSequence = Sequence([item])
    ds.SeriesDescription = series_description(spec)
    ds.ManufacturerModelName = a.scanner_model
    ds.PatientName = st.patient_name
    ds.PatientID = st.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = st.patient_sex
    ds.PatientAge = _age(st.patient_age_years)
    if st.patient_weight_kg is not None:
        ds.PatientWeight = f"{st.patient_weight_kg:g}"
    ds.AdmittingDiagnosesDescription = st.indication[:64]
    ds.ContrastBolusAgent = "" if a.contrast == "none" else "IODINATED CONTRAST"
    if a.contrast != "none":
        ds.ContrastBolusRoute = "IV"
    ds.BodyPartExamined = st.body_part
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = _ds(a.slice_thickness_mm)
    ds.KVP = f"{a.kvp:g}"
    ds.SpacingBetweenSlices = _ds(a.interval_mm)
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = a.software_versions
    ds.ProtocolName = st.protocol_name
    ds.ReconstructionDiameter = f"{pixel_spacing * cols:.2f}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = str(int(round(a.rotation_time_s * 1000)))
    ds.XRayTubeCurrent = str(int(round(a.tube_current_ma)))
    ds.Exposure = str(int(round(a.tube_current_ma * a.rotation_time_s)))
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = str(int(round(a.kvp * a.tube_current_ma / 1000)))
    ds.FocalSpots = "0.7"
    ds.ConvolutionKernel = a.convolution_kernel
    ds.PatientPosition = "HFS"
    ds.RevolutionTime = float(a.rotation_time_s)
    ds.SpiralPitchFactor = float(a.pitch)
    ds.CTDIvol = round(float(a.ctdi_vol), 3)
    phantom = Dataset()  # CTDIvol is stated for the 32 cm body phantom
    phantom.CodeValue, phantom.CodingSchemeDesignator, phantom.CodeMeaning = "113691", "DCM", "IEC Body Dosimetry Phantom"
    ds.CTDIPhantomTypeCodeSequence = Sequence([phantom])
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.StudyID = "1"
    ds.SeriesNumber = str(st.series_number)
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageComments = "Synthetic chest phantom (MedImgAI); not a patient"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(pixel_spacing), _ds(pixel_spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if a.kernel == "sharp":
        ds.WindowCenter, ds.WindowWidth = ["-600", "40"], ["1500", "400"]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    else:
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    ds.RescaleIntercept = f"{INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    for keyword, value in spec.header_overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


class SeriesWriter:
    """Writes slices as they are rendered: each file goes to a temporary name, then is renamed."""

    def __init__(self, spec: PhantomSpec, out_dir: Path, uids: SeriesUIDs, rows: int, cols: int,
                 pixel_spacing: float, n_slices: int):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ds = base_dataset(spec, uids, rows, cols, pixel_spacing)
        self.n = n_slices
        self.spec = spec
        self.uids = uids
        self.files: list[str] = []
        self.sop_uids: list[str] = [""] * n_slices

    def instance_number(self, k: int) -> int:
        # scanners number from the first slice acquired: head-first supine scans run superior to
        # inferior, so instance 1 is the most superior slice (the highest k here)
        return self.n - k

    def write(self, k: int, x0: float, y0: float, z: float, hu: np.ndarray) -> Path:
        ds = self.ds
        inst = self.instance_number(k)
        if self.spec.deterministic_uids:
            sop = generate_uid(entropy_srcs=[self.uids.series, str(k)])
        else:
            sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = str(inst)
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.SliceLocation = _ds(z)
        stored = np.clip(hu - INTERCEPT, -32768, 32767).astype("<i2")
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "MEDIMGAI_PH1"
        ds.file_meta = meta
        name = f"CT{inst:05d}.dcm"
        final = self.out_dir / name
        tmp = self.out_dir / f".{name}.tmp"
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, final)
        self.sop_uids[k] = sop
        self.files.append(name)
        return final
