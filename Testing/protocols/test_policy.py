"""The policy the pipeline applies to a conformance report: analyze, analyze with a warning, or refuse;
and the block that findings.json records."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from MedImgAILib.dicom.metadata import extract_metadata
from MedImgAILib.protocols import ConformancePolicy, NonconformantSeriesError, check_series
from MedImgAILib.results import AnalysisResult


def _md(**kw):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "Lung screening"
    ds.SliceThickness = 1.0
    ds.SpacingBetweenSlices = 1.0
    ds.CTDIvol = 1.5
    ds.SpiralPitchFactor = 1.0
    del ds.ContrastBolusAgent  # CT_small is a contrast study (ISOVUE300/100); screening is not
    for k, v in kw.items():
        setattr(ds, k, v)
    return extract_metadata(ds)


def test_header_only_check_matches_and_conforms_until_pixels_are_seen():
    rep = check_series(_md(), None)
    assert rep.protocol.id == "ct-chest-ldct-screening" and rep.matched_by == "description"
    statuses = {c.name: c.status for c in rep.checks}
    assert statuses["lung_coverage"] == "not_evaluated"
    assert rep.conformant  # image-quality criteria not evaluated do not block
    assert ConformancePolicy(on_nonconformant="refuse").decide(rep).action == "analyze"


def test_contrast_study_fails_the_noncontrast_screening_protocol():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    rep = check_series(extract_metadata(ds), None, "ct-chest-ldct-screening")
    c = {c.name: c for c in rep.checks}["no_contrast"]
    assert c.status == "fail" and c.actual == "ISOVUE300/100"
    assert c.source == "(0018,0010) ContrastBolusAgent"


def test_warn_policy_analyzes_nonconformant_series_with_reasons():
    rep = check_series(_md(KVP=80), None)
    assert not rep.conformant
    d = ConformancePolicy().decide(rep)
    assert d.action == "analyze_with_warning" and d.proceed
    assert any(r.startswith("kvp:") and "80" in r for r in d.reasons)


def test_refuse_policy_refuses_and_enforce_raises_naming_series_and_criterion():
    rep = check_series(_md(KVP=80), None)
    pol = ConformancePolicy(on_nonconformant="refuse")
    assert pol.decide(rep).action == "refuse"
    with pytest.raises(NonconformantSeriesError) as exc:
        pol.enforce(rep)
    assert rep.series_instance_uid in str(exc.value) and "kvp" in str(exc.value)


def test_missing_required_value_can_be_downgraded_to_a_warning():
    md = _md()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.BodyPartExamined, ds.SeriesDescription, ds.SliceThickness, ds.SpacingBetweenSlices = "CHEST", "LDCT", 1.0, 1.0
    del ds.KVP
    del ds.ContrastBolusAgent
    rep = check_series(extract_metadata(ds), None)
    assert {c.name: c.status for c in rep.checks}["kvp"] == "missing" and not rep.conformant
    assert ConformancePolicy(on_nonconformant="refuse").decide(rep).action == "refuse"
    lenient = ConformancePolicy(on_nonconformant="refuse", missing_required="warn")
    assert lenient.decide(rep).action == "analyze_with_warning"
    assert md  # the complete header still conforms (previous test)


def test_no_protocol_and_model_fields():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    rep = check_series(extract_metadata(ds), None, model_required_fields=["acquisition.convolution_kernel", "study.indication"])
    assert rep.protocol is None
    assert rep.metadata_completeness.missing_by["model"] == ["study.indication"]
    assert ConformancePolicy().decide(rep).action == "analyze_with_warning"
    assert ConformancePolicy(on_no_protocol="refuse").decide(rep).action == "refuse"
    assert ConformancePolicy(refuse_on_metadata_missing=True).decide(rep).action == "refuse"


def test_candidates_from_a_model_card_and_findings_block():
    rep = check_series(_md(), None, candidates=["ct-chest-ldct-screening", "ct-chest-routine"])
    block = rep.findings_block()
    assert block["id"] == "ct-chest-ldct-screening" and block["version"] == "1.0.0"
    assert block["conformant"] is True
    assert {"name", "expected", "actual", "status"} <= set(block["checks"][0])
    # it is what AnalysisResult.protocol holds in findings.json
    res = AnalysisResult(protocol=block)
    assert AnalysisResult.model_validate(res.to_json()).protocol["id"] == "ct-chest-ldct-screening"


def test_unknown_model_field_is_an_error():
    from MedImgAILib.errors import ProtocolError

    with pytest.raises(ProtocolError, match="acquisition.nope"):
        check_series(_md(), None, model_required_fields=["acquisition.nope"])
