"""``SeriesMetadata``: one normalized record per series, from whatever the headers hold.

Every field is a ``Tagged`` value that says where it came from (the tag, or ``derived:...``) and whether
it was missing, because a protocol check must tell "slice thickness 5 mm" from "slice thickness not
recorded". PHI-bearing identifiers live in ``identifiers`` only; ``public_dict()`` drops them, and that
is what logs, findings.json and research exports see.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Callable, Generic, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Tagged(BaseModel, Generic[T]):
    value: Optional[T] = None
    source: str = ""  # "(0018,0050) SliceThickness", "derived: ...", or "" when missing
    missing: bool = True

    model_config = ConfigDict(frozen=True)


def _missing(source: str = "") -> Tagged:
    return Tagged(value=None, source=source, missing=True)


class Identifiers(BaseModel):
    """PHI: kept because later stages need them (prior matching, PACS queries, SR patient module)."""

    patient_id: Tagged[str] = Field(default_factory=_missing)
    patient_name: Tagged[str] = Field(default_factory=_missing)
    patient_birth_date: Tagged[str] = Field(default_factory=_missing)
    accession_number: Tagged[str] = Field(default_factory=_missing)


class PatientContext(BaseModel):
    age_years: Tagged[float] = Field(default_factory=_missing)
    sex: Tagged[str] = Field(default_factory=_missing)  # "M", "F", "O"
    weight_kg: Tagged[float] = Field(default_factory=_missing)


class StudyInfo(BaseModel):
    study_instance_uid: Tagged[str] = Field(default_factory=_missing)
    study_date: Tagged[str] = Field(default_factory=_missing)  # ISO yyyy-mm-dd
    study_time: Tagged[str] = Field(default_factory=_missing)
    study_description: Tagged[str] = Field(default_factory=_missing)
    study_id: Tagged[str] = Field(default_factory=_missing)
    #: reason for study / indication, where present (drives screening vs incidental in the rules)
    indication: Tagged[str] = Field(default_factory=_missing)
    procedure_code: Tagged[str] = Field(default_factory=_missing)  # "scheme:value meaning"


class SeriesInfo(BaseModel):
    series_instance_uid: Tagged[str] = Field(default_factory=_missing)
    series_number: Tagged[int] = Field(default_factory=_missing)
    modality: Tagged[str] = Field(default_factory=_missing)
    sop_class_uid: Tagged[str] = Field(default_factory=_missing)
    series_description: Tagged[str] = Field(default_factory=_missing)
    protocol_name: Tagged[str] = Field(default_factory=_missing)
    body_part_examined: Tagged[str] = Field(default_factory=_missing)
    #: SNOMED CT code of the body part ("SCT:43799004 Chest")
    body_part_snomed: Tagged[str] = Field(default_factory=_missing)
    frame_of_reference_uid: Tagged[str] = Field(default_factory=_missing)
    image_type: Tagged[str] = Field(default_factory=_missing)
    patient_position: Tagged[str] = Field(default_factory=_missing)
    number_of_instances: Tagged[int] = Field(default_factory=_missing)


class EquipmentInfo(BaseModel):
    manufacturer: Tagged[str] = Field(default_factory=_missing)
    model_name: Tagged[str] = Field(default_factory=_missing)
    station_name: Tagged[str] = Field(default_factory=_missing)
    software_versions: Tagged[str] = Field(default_factory=_missing)
    institution_name: Tagged[str] = Field(default_factory=_missing)


class AcquisitionInfo(BaseModel):
    slice_thickness_mm: Tagged[float] = Field(default_factory=_missing)
    spacing_between_slices_mm: Tagged[float] = Field(default_factory=_missing)
    pixel_spacing_mm: Tagged[list[float]] = Field(default_factory=_missing)  # [row, column]
    rows: Tagged[int] = Field(default_factory=_missing)
    columns: Tagged[int] = Field(default_factory=_missing)
    reconstruction_diameter_mm: Tagged[float] = Field(default_factory=_missing)
    kvp: Tagged[float] = Field(default_factory=_missing)
    tube_current_ma: Tagged[float] = Field(default_factory=_missing)
    exposure_mas: Tagged[float] = Field(default_factory=_missing)
    exposure_time_ms: Tagged[float] = Field(default_factory=_missing)
    ctdi_vol_mgy: Tagged[float] = Field(default_factory=_missing)
    convolution_kernel: Tagged[str] = Field(default_factory=_missing)
    contrast_agent: Tagged[str] = Field(default_factory=_missing)
    gantry_tilt_deg: Tagged[float] = Field(default_factory=_missing)
    spiral_pitch_factor: Tagged[float] = Field(default_factory=_missing)
    scan_options: Tagged[str] = Field(default_factory=_missing)
    # MR
    repetition_time_ms: Tagged[float] = Field(default_factory=_missing)
    echo_time_ms: Tagged[float] = Field(default_factory=_missing)
    inversion_time_ms: Tagged[float] = Field(default_factory=_missing)
    flip_angle_deg: Tagged[float] = Field(default_factory=_missing)
    magnetic_field_strength_t: Tagged[float] = Field(default_factory=_missing)
    mr_acquisition_type: Tagged[str] = Field(default_factory=_missing)  # "2D" / "3D"
    scanning_sequence: Tagged[str] = Field(default_factory=_missing)
    sequence_variant: Tagged[str] = Field(default_factory=_missing)
    sequence_name: Tagged[str] = Field(default_factory=_missing)


class SeriesMetadata(BaseModel):
    schema_version: str = "medimgai.series-metadata/1"
    identifiers: Identifiers = Field(default_factory=Identifiers)
    patient: PatientContext = Field(default_factory=PatientContext)
    study: StudyInfo = Field(default_factory=StudyInfo)
    series: SeriesInfo = Field(default_factory=SeriesInfo)
    equipment: EquipmentInfo = Field(default_factory=EquipmentInfo)
    acquisition: AcquisitionInfo = Field(default_factory=AcquisitionInfo)

    def public_dict(self) -> dict[str, Any]:
        """Everything except the PHI identifiers (for logs, findings.json, research exports)."""
        return self.model_dump(mode="json", exclude={"identifiers"})

    def flat(self) -> dict[str, Any]:
        """``{"acquisition.slice_thickness_mm": 1.25, ...}``: values only, PHI excluded, missing = None."""
        out: dict[str, Any] = {}
        for section, fields in self.public_dict().items():
            if isinstance(fields, dict):
                for name, tagged in fields.items():
                    out[f"{section}.{name}"] = tagged["value"]
        return out

    def get(self, dotted: str) -> Tagged:
        section, name = dotted.split(".", 1)
        return getattr(getattr(self, section), name)

    def missing_fields(self) -> list[str]:
        return [k for k, v in self.flat().items() if v is None]


# --------------------------------------------------------------------------------------------------
# Extraction from a pydicom dataset
# --------------------------------------------------------------------------------------------------

#: DICOM Part 16 CID 4031 (Common Anatomic Regions) for the Body Part Examined defined terms we meet
BODY_PART_SNOMED: dict[str, tuple[str, str]] = {
    "CHEST": ("43799004", "Chest"),
    "THORAX": ("43799004", "Chest"),
    "LUNG": ("39607008", "Lung"),
    "HEAD": ("69536005", "Head"),
    "BRAIN": ("12738006", "Brain"),
    "SKULL": ("89546000", "Skull"),
    "NECK": ("45048000", "Neck"),
    "HEADNECK": ("774007", "Head and Neck"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "PELVIS": ("816092008", "Pelvis"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "LIVER": ("10200004", "Liver"),
    "KIDNEY": ("64033007", "Kidney"),
    "SPINE": ("421060004", "Spine"),
    "CSPINE": ("122494005", "Cervical spine"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "HEART": ("80891009", "Heart"),
    "BREAST": ("76752008", "Breast"),
    "KNEE": ("72696002", "Knee"),
    "WHOLEBODY": ("38266002", "Entire body"),
}


def _src(ds_tag_kw: str, tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {ds_tag_kw}"


def _lookup(ds: Any, keyword: str) -> tuple[Any, str]:
    """Value of ``keyword`` in ``ds`` or in the enhanced multi-frame functional group macros."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    src = _src(keyword, tag) if tag is not None else keyword
    if keyword in ds and ds[keyword].value not in (None, "", []):
        return ds[keyword].value, src
    # Enhanced CT/MR: parameters sit in shared (then first per-frame) functional groups
    for gkw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(gkw)
        if not groups:
            continue
        for item in groups[0]:
            if item.VR != "SQ" or not item.value:
                continue
            sub = item.value[0]
            if keyword in sub and sub[keyword].value not in (None, "", []):
                return sub[keyword].value, f"{src} in {gkw}/{item.keyword}"
    return None, src


def _conv(value: Any, kind: Callable[[Any], Any]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _text(v: Any) -> str:
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _float(v: Any) -> float:
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = v[0]
    return float(v)


def _floats(v: Any) -> list[float]:
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return [float(x) for x in v]
    return [float(v)]


def _tagged(ds: Any, keyword: str, kind: Callable[[Any], Any]) -> Tagged:
    raw, src = _lookup(ds, keyword)
    if raw is None:
        return Tagged(value=None, source=src, missing=True)
    value = _conv(raw, kind)
    if value in (None, ""):
        return Tagged(value=None, source=f"{src} (unreadable)", missing=True)
    return Tagged(value=value, source=src, missing=False)


def _derived(value: Any, how: str) -> Tagged:
    if value is None:
        return _missing(f"derived: {how}")
    return Tagged(value=value, source=f"derived: {how}", missing=False)


def _iso_date(da: str | None) -> str | None:
    if not da:
        return None
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", str(da).strip())
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


def _age_years(age: str) -> float | None:
    m = re.fullmatch(r"(\d{3})([DWMY])", age.strip())
    if not m:
        return None
    n = int(m.group(1))
    return {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12.0, "Y": float(n)}[m.group(2)]


def _code_text(ds: Any, keyword: str) -> Tagged:
    seq = ds.get(keyword)
    if not seq:
        return _tagged(ds, keyword, _text)
    item = seq[0]
    scheme = item.get("CodingSchemeDesignator", "")
    value = item.get("CodeValue", "") or item.get("LongCodeValue", "") or item.get("URNCodeValue", "")
    meaning = item.get("CodeMeaning", "")
    from pydicom.datadict import tag_for_keyword

    return Tagged(value=f"{scheme}:{value} {meaning}".strip(), source=_src(keyword, tag_for_keyword(keyword)), missing=False)


def extract_metadata(ds: Any, number_of_instances: int | None = None) -> SeriesMetadata:
    """Normalize one representative dataset of a series (headers only are needed)."""
    ident = Identifiers(
        patient_id=_tagged(ds, "PatientID", _text),
        patient_name=_tagged(ds, "PatientName", _text),
        patient_birth_date=_tagged(ds, "PatientBirthDate", _iso_date),
        accession_number=_tagged(ds, "AccessionNumber", _text),
    )

    age = _tagged(ds, "PatientAge", lambda v: _age_years(str(v)))
    if age.missing:
        birth = _iso_date(ds.get("PatientBirthDate"))
        when = _iso_date(ds.get("StudyDate")) or _iso_date(ds.get("SeriesDate"))
        if birth and when:
            b, w = date.fromisoformat(birth), date.fromisoformat(when)
            age = _derived((w - b).days / 365.25, "PatientBirthDate and StudyDate")
    sex = _tagged(ds, "PatientSex", lambda v: str(v).strip().upper() or None)
    patient = PatientContext(age_years=age, sex=sex, weight_kg=_tagged(ds, "PatientWeight", _float))

    indication = _tagged(ds, "ReasonForTheRequestedProcedure", _text)
    if indication.missing:
        indication = _code_text(ds, "ReasonForRequestedProcedureCodeSequence")
    if indication.missing:
        indication = _tagged(ds, "RequestedProcedureDescription", _text)
    if indication.missing:
        rq = ds.get("RequestAttributesSequence")
        if rq and rq[0].get("ReasonForTheRequestedProcedure"):
            indication = Tagged(
                value=str(rq[0].ReasonForTheRequestedProcedure),
                source="(0040,0275) RequestAttributesSequence/ReasonForTheRequestedProcedure",
                missing=False,
            )
    if indication.missing:  # some sites and our phantoms carry the indication as the admitting diagnosis
        indication = _tagged(ds, "AdmittingDiagnosesDescription", _text)
    study = StudyInfo(
        study_instance_uid=_tagged(ds, "StudyInstanceUID", _text),
        study_date=_tagged(ds, "StudyDate", _iso_date),
        study_time=_tagged(ds, "StudyTime", _text),
        study_description=_tagged(ds, "StudyDescription", _text),
        study_id=_tagged(ds, "StudyID", _text),
        indication=indication,
        procedure_code=_code_text(ds, "ProcedureCodeSequence") if ds.get("ProcedureCodeSequence") else _missing("(0008,1032) ProcedureCodeSequence"),
    )

    body = _tagged(ds, "BodyPartExamined", lambda v: str(v).strip().upper() or None)
    snomed = _missing("derived: BodyPartExamined via CID 4031")
    if not body.missing:
        hit = BODY_PART_SNOMED.get(re.sub(r"[^A-Z]", "", body.value))
        if hit:
            snomed = _derived(f"SCT:{hit[0]} {hit[1]}", "BodyPartExamined via CID 4031")
    if snomed.missing and ds.get("AnatomicRegionSequence"):
        snomed = _code_text(ds, "AnatomicRegionSequence")
    n_inst = number_of_instances
    if n_inst is None and "NumberOfFrames" in ds:
        n_inst = 1
    series = SeriesInfo(
        series_instance_uid=_tagged(ds, "SeriesInstanceUID", _text),
        series_number=_tagged(ds, "SeriesNumber", int),
        modality=_tagged(ds, "Modality", _text),
        sop_class_uid=_tagged(ds, "SOPClassUID", _text),
        series_description=_tagged(ds, "SeriesDescription", _text),
        protocol_name=_tagged(ds, "ProtocolName", _text),
        body_part_examined=body,
        body_part_snomed=snomed,
        frame_of_reference_uid=_tagged(ds, "FrameOfReferenceUID", _text),
        image_type=_tagged(ds, "ImageType", _text),
        patient_position=_tagged(ds, "PatientPosition", _text),
        number_of_instances=_derived(n_inst, "files in the series") if n_inst is not None else _missing(),
    )
    equipment = EquipmentInfo(
        manufacturer=_tagged(ds, "Manufacturer", _text),
        model_name=_tagged(ds, "ManufacturerModelName", _text),
        station_name=_tagged(ds, "StationName", _text),
        software_versions=_tagged(ds, "SoftwareVersions", _text),
        institution_name=_tagged(ds, "InstitutionName", _text),
    )
    tube = _tagged(ds, "XRayTubeCurrent", _float)
    if tube.missing:
        tube = _tagged(ds, "XRayTubeCurrentInmA", _float)
    exposure = _tagged(ds, "Exposure", _float)
    if exposure.missing:
        exposure = _tagged(ds, "ExposureInmAs", _float)
    kernel = _tagged(ds, "ConvolutionKernel", _text)
    acq = AcquisitionInfo(
        slice_thickness_mm=_tagged(ds, "SliceThickness", _float),
        spacing_between_slices_mm=_tagged(ds, "SpacingBetweenSlices", _float),
        pixel_spacing_mm=_tagged(ds, "PixelSpacing", _floats),
        rows=_tagged(ds, "Rows", int),
        columns=_tagged(ds, "Columns", int),
        reconstruction_diameter_mm=_tagged(ds, "ReconstructionDiameter", _float),
        kvp=_tagged(ds, "KVP", _float),
        tube_current_ma=tube,
        exposure_mas=exposure,
        exposure_time_ms=_tagged(ds, "ExposureTime", _float),
        ctdi_vol_mgy=_tagged(ds, "CTDIvol", _float),
        convolution_kernel=kernel,
        contrast_agent=_tagged(ds, "ContrastBolusAgent", _text),
        gantry_tilt_deg=_tagged(ds, "GantryDetectorTilt", _float),
        spiral_pitch_factor=_tagged(ds, "SpiralPitchFactor", _float),
        scan_options=_tagged(ds, "ScanOptions", _text),
        repetition_time_ms=_tagged(ds, "RepetitionTime", _float),
        echo_time_ms=_tagged(ds, "EchoTime", _float),
        inversion_time_ms=_tagged(ds, "InversionTime", _float),
        flip_angle_deg=_tagged(ds, "FlipAngle", _float),
        magnetic_field_strength_t=_tagged(ds, "MagneticFieldStrength", _float),
        mr_acquisition_type=_tagged(ds, "MRAcquisitionType", _text),
        scanning_sequence=_tagged(ds, "ScanningSequence", _text),
        sequence_variant=_tagged(ds, "SequenceVariant", _text),
        sequence_name=_tagged(ds, "SequenceName", _text),
    )
    return SeriesMetadata(
        identifiers=ident, patient=patient, study=study, series=series, equipment=equipment, acquisition=acq
    )
