"""SeriesMetadata: normalized values, where each came from, and what was missing."""

import pydicom
from pydicom.data import get_testdata_file

from MedImgAILib.dicom.metadata import extract_metadata


def test_ct_small_header_is_normalized_with_sources():
    md = extract_metadata(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True))
    assert md.series.modality.value == "CT"
    assert md.acquisition.kvp.value == 120.0
    assert md.acquisition.kvp.source == "(0018,0060) KVP"
    assert md.acquisition.slice_thickness_mm.value == 5.0
    assert md.equipment.manufacturer.value == "GE MEDICAL SYSTEMS"
    # absent from the header: reported missing, not guessed
    assert md.acquisition.ctdi_vol_mgy.missing and md.acquisition.ctdi_vol_mgy.value is None
    assert "acquisition.ctdi_vol_mgy" in md.missing_fields()


def test_phi_stays_out_of_public_views():
    md = extract_metadata(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True))
    assert md.identifiers.patient_name.value  # kept for the stages that need it
    public = md.public_dict()
    assert "identifiers" not in public
    assert str(md.identifiers.patient_name.value) not in str(public)
    assert not any(k.startswith("identifiers.") for k in md.flat())


def test_mr_parameters_and_body_part_codes():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    ds.BodyPartExamined = "HEAD"
    md = extract_metadata(ds)
    assert md.series.modality.value == "MR"
    assert md.acquisition.repetition_time_ms.value is not None
    assert md.acquisition.echo_time_ms.value is not None
    assert md.series.body_part_snomed.value == "SCT:69536005 Head"
    assert md.series.body_part_snomed.source.startswith("derived:")


def test_indication_falls_back_to_the_admitting_diagnosis():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.AdmittingDiagnosesDescription = "lung cancer screening"
    md = extract_metadata(ds)
    assert md.study.indication.value == "lung cancer screening"
    assert "AdmittingDiagnosesDescription" in md.study.indication.source
