"""Patient / exam context: from --context text and from the study's own headers; explicit wins."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from MedImgAILib.dicom.metadata import extract_metadata
from MedImgAILib.errors import RuleError
from MedImgAILib.results import Finding
from MedImgAILib.rules import RuleContext, evaluate, infer_context, load_rule_set, make_context, parse_context_arg


def test_parse_context_arg():
    assert parse_context_arg("age=67,risk=HIGH,screening=true,exam=followup,known_cancer=no,immunocompromised=0") == {
        "age_years": 67.0,
        "risk": "high",
        "screening": True,
        "exam": "follow-up",
        "known_cancer": False,
        "immunocompromised": False,
    }
    assert parse_context_arg("") == {}
    assert parse_context_arg(" screening = yes , ") == {"screening": True}
    assert parse_context_arg("incomplete=prior CT being located,s=true") == {
        "incomplete_reason": "prior CT being located",
        "significant_other_findings": True,
    }


@pytest.mark.parametrize(
    "text,message",
    [
        ("age=old", "expected a number of years"),
        ("risk=medium", "expected low or high"),
        ("screening=perhaps", "expected true or false"),
        ("exam=annual", "expected baseline or follow-up"),
        ("smoker=yes", "is not KEY=VALUE with KEY one of"),
        ("screening", "is not KEY=VALUE"),
    ],
)
def test_parse_context_arg_errors_are_actionable(text, message):
    with pytest.raises(RuleError, match=message):
        parse_context_arg(text)


def test_make_context_error_names_the_field():
    with pytest.raises(RuleError, match="rule context field risk"):
        make_context(risk="medium")


def _ct(**attrs) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_screening_and_age_inferred_from_the_headers():
    md = extract_metadata(_ct(PatientAge="067Y", ReasonForTheRequestedProcedure="Annual lung cancer screening, 30 pack-years"))
    ctx = infer_context(md)
    assert ctx.screening is True and ctx.age_years == 67.0


def test_screening_from_the_procedure_code():
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "RPID16", "RADLEX", "CT chest low dose screening"
    md = extract_metadata(_ct(ProcedureCodeSequence=Sequence([item])))
    assert infer_context(md).screening is True


def test_known_cancer_inferred_from_a_staging_indication():
    md = extract_metadata(_ct(ReasonForTheRequestedProcedure="Staging, known colon cancer", PatientAge="058Y"))
    ctx = infer_context(md)
    assert ctx.known_cancer is True and ctx.screening is None
    ev = evaluate([Finding(id="F1", label="nodule", type="solid", mean_diameter_mm=7.0)], ctx, load_rule_set("fleischner-2017"))
    assert not ev.applicable and "known cancer" in ev.reason


def test_nothing_in_the_headers_leaves_it_unknown():
    ctx = infer_context(extract_metadata(_ct(StudyDescription="CT CHEST W CONTRAST")))
    assert ctx.screening is None and ctx.age_years is None and ctx.known_cancer is None


def test_explicit_context_wins_over_inferred():
    md = extract_metadata(_ct(PatientAge="067Y", ReasonForTheRequestedProcedure="LDCT lung screening"))
    ctx = infer_context(md, {"screening": False, "risk": "low"})
    assert ctx.screening is False and ctx.age_years == 67.0 and ctx.risk == "low"
    ctx = infer_context(md, RuleContext(age_years=70))
    assert ctx.age_years == 70 and ctx.screening is True
    # an explicit None means "not given", not "unknown": the inferred value stays
    assert infer_context(md, {"screening": None}).screening is True


def test_exam_defaults():
    assert RuleContext().effective_exam() == "baseline"
    assert RuleContext(priors={"F1": {"mean_diameter_mm": 5.0}}).effective_exam() == "follow-up"
    assert RuleContext(exam="follow-up").effective_exam() == "follow-up"


def test_context_for_findings_json_has_no_defaults_noise():
    assert RuleContext(age_years=60, screening=False).public_dict() == {"age_years": 60.0, "screening": False}


def test_unknown_reader_flag_is_refused():
    with pytest.raises(RuleError, match=r"finding F1: unknown flag\(s\) \['proven-benign'\]"):
        make_context(finding_flags={"F1": ["proven-benign"]})


def test_prior_from_finding_prior_dict_with_days_and_prefixed_names():
    from MedImgAILib.rules import PriorMeasurement

    p = PriorMeasurement.model_validate({"prior_mean_diameter_mm": 5.0, "interval_days": 365, "volume_change_pct": 40})
    assert p.mean_diameter_mm == 5.0 and abs(p.interval_months - 12.0) < 0.01
    f = Finding(id="F1", label="nodule", type="solid", mean_diameter_mm=6.6, prior={"prior_mean_diameter_mm": 5.0, "interval_days": 400})
    ev = evaluate([f], RuleContext(screening=True, exam="follow-up"), load_rule_set("lung-rads"))
    assert ev.facts["F1"].status == "stable"  # 13 months: outside the growth window
    assert ev.categories["F1"].value == "3"  # but it crossed 6 mm
