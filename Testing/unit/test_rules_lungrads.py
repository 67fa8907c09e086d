"""Lung-RADS v2022, table row by table row and boundary by boundary.

Each parametrized table reads like the ACR summary: nodule type, exam (baseline / new / growing /
stable), mean diameter as measured (unrounded) -> the category a radiologist would assign.
"""

from __future__ import annotations

import pytest

from MedImgAILib.results import AnalysisResult, Finding
from MedImgAILib.rules import NOT_APPLICABLE, NOT_ASSESSABLE, PriorMeasurement, RuleContext, evaluate, load_rule_set

LR = load_rule_set("lung-rads")


def nodule(kind: str, mean: float | None, solid: float | None = None, fid: str = "F1", **kw) -> Finding:
    return Finding(id=fid, label="nodule", type=kind, mean_diameter_mm=mean, solid_core_mean_diameter_mm=solid, **kw)


def baseline(*findings: Finding, **ctx):
    return evaluate(list(findings), RuleContext(screening=True, exam="baseline", **ctx), LR)


def follow_up(*findings: Finding, priors: dict | None = None, **ctx):
    priors = {k: PriorMeasurement(**v) for k, v in (priors or {}).items()}
    return evaluate(list(findings), RuleContext(screening=True, exam="follow-up", priors=priors, **ctx), LR)


def cat(ev, fid: str = "F1") -> str:
    return ev.categories[fid].value


# ---- rule set identity ------------------------------------------------------------------------------


def test_rule_set_identity_and_conventions():
    assert (LR.id, LR.version, LR.system) == ("lung-rads", "v2022", "Lung-RADS")
    assert "Lung-RADS" in LR.source and "2022" in LR.source
    assert LR.measurement.decimals == 1 and LR.measurement.rounding == "half-up"
    assert LR.growth.min_increase_mm == 1.5 and LR.growth.max_interval_months == 12


# ---- solid, baseline: <6 -> 2, 6 to <8 -> 3, 8 to <15 -> 4A, >=15 -> 4B -------------------------------

SOLID_BASELINE = [
    # mean (mm), category, deciding row
    (2.0, "2", "lr-solid-baseline-2"),
    (5.9, "2", "lr-solid-baseline-2"),
    (6.0, "3", "lr-solid-baseline-3"),
    (7.9, "3", "lr-solid-baseline-3"),
    (8.0, "4A", "lr-solid-baseline-4A"),
    (14.9, "4A", "lr-solid-baseline-4A"),
    (15.0, "4B", "lr-solid-baseline-4B"),
    (32.0, "4B", "lr-solid-baseline-4B"),
]


@pytest.mark.parametrize("mean,category,row", SOLID_BASELINE, ids=[f"{m}mm->{c}" for m, c, _ in SOLID_BASELINE])
def test_solid_baseline(mean, category, row):
    ev = baseline(nodule("solid", mean))
    assert cat(ev) == category
    assert ev.categories["F1"].rule_id == row
    assert ev.categories["F1"].system == "Lung-RADS" and ev.categories["F1"].version == "v2022"


ROUNDING = [
    # the mean is rounded half-up to 0.1 mm before the table is read
    (5.94, 5.9, "2"),
    (5.949, 5.9, "2"),
    (5.95, 6.0, "3"),  # binary round(5.95, 1) gives 5.9: the engine must not
    (5.96, 6.0, "3"),
    (7.94, 7.9, "3"),
    (7.95, 8.0, "4A"),
    (14.94, 14.9, "4A"),
    (14.95, 15.0, "4B"),
]


@pytest.mark.parametrize("measured,rounded,category", ROUNDING, ids=[f"{m}->{r}->{c}" for m, r, c in ROUNDING])
def test_mean_diameter_rounded_to_one_decimal_half_up(measured, rounded, category):
    ev = baseline(nodule("solid", measured))
    assert ev.facts["F1"].mean_diameter_mm == rounded
    assert cat(ev) == category


def test_mean_diameter_from_long_and_short_axis_when_mean_missing():
    f = Finding(id="F1", label="nodule", type="solid", long_axis_mm=7.0, short_axis_mm=5.0)
    ev = baseline(f)
    assert ev.facts["F1"].mean_diameter_mm == 6.0 and cat(ev) == "3"


# ---- part-solid, baseline (total mean diameter; solid component) --------------------------------------

PART_SOLID_BASELINE = [
    # total, solid component, category
    (5.9, 2.0, "2"),  # <6 mm total
    (5.9, None, "2"),  # the solid component is not needed below 6 mm total
    (6.0, 5.9, "3"),  # >=6 total, solid <6
    (12.0, 5.9, "3"),
    (6.0, 6.0, "4A"),  # solid >=6 to <8
    (12.0, 7.9, "4A"),
    (8.0, 8.0, "4B"),  # solid >=8
    (20.0, 12.0, "4B"),
]


@pytest.mark.parametrize("total,solid,category", PART_SOLID_BASELINE, ids=[f"{t}/{s}->{c}" for t, s, c in PART_SOLID_BASELINE])
def test_part_solid_baseline(total, solid, category):
    assert cat(baseline(nodule("part-solid", total, solid))) == category


def test_part_solid_solid_component_rounded_too():
    assert cat(baseline(nodule("part-solid", 10.0, 5.95))) == "4A"  # 5.95 -> 6.0
    assert cat(baseline(nodule("part-solid", 10.0, 5.949))) == "3"


def test_part_solid_without_solid_component_is_not_assessable_above_6mm():
    ev = baseline(nodule("part-solid", 9.0, None))
    assert cat(ev) == NOT_ASSESSABLE
    assert "solid component not measured" in ev.categories["F1"].recommendation
    assert ev.study.value == NOT_ASSESSABLE


# ---- ground-glass (non-solid) --------------------------------------------------------------------------

GG_BASELINE = [(5.0, "2"), (29.9, "2"), (29.94, "2"), (29.95, "3"), (30.0, "3"), (45.0, "3")]


@pytest.mark.parametrize("mean,category", GG_BASELINE, ids=[f"{m}->{c}" for m, c in GG_BASELINE])
def test_ground_glass_baseline(mean, category):
    assert cat(baseline(nodule("ground-glass", mean))) == category


@pytest.mark.parametrize("mean,category", [(29.9, "2"), (30.0, "3")])
def test_ground_glass_new(mean, category):
    assert cat(follow_up(nodule("ground-glass", mean))) == category


GG_FOLLOW_UP = [
    # prior, now, category
    (10.0, 12.0, "2"),  # <30 and growing
    (29.0, 30.6, "3"),  # growing across 30 mm
    (29.5, 30.0, "3"),  # not growth (0.5 mm), but reaches the >=30 mm size category
    (31.0, 33.0, "2"),  # >=30 and slowly growing
    (35.0, 35.0, "2"),  # >=30 and stable
]


@pytest.mark.parametrize("prior,now,category", GG_FOLLOW_UP, ids=[f"{p}->{n}:{c}" for p, n, c in GG_FOLLOW_UP])
def test_ground_glass_follow_up(prior, now, category):
    ev = follow_up(nodule("ground-glass", now), priors={"F1": {"mean_diameter_mm": prior, "interval_months": 12}})
    assert cat(ev) == category


def test_type_aliases_accepted():
    assert cat(baseline(nodule("nonsolid", 35.0))) == "3"
    assert cat(baseline(nodule("Part solid", 7.0, 3.0))) == "3"


# ---- solid, new on a follow-up exam: <4 -> 2, 4 to <6 -> 3, 6 to <8 -> 4A, >=8 -> 4B ------------------

SOLID_NEW = [(3.9, "2"), (4.0, "3"), (5.9, "3"), (6.0, "4A"), (7.9, "4A"), (8.0, "4B"), (20.0, "4B")]


@pytest.mark.parametrize("mean,category", SOLID_NEW, ids=[f"new {m}->{c}" for m, c in SOLID_NEW])
def test_solid_new(mean, category):
    ev = follow_up(nodule("solid", mean))
    assert ev.facts["F1"].status == "new"
    assert cat(ev) == category


PART_SOLID_NEW = [
    (5.9, 2.0, "3"),  # new <6 mm total
    (5.9, 3.9, "3"),
    (6.0, 3.9, "4A"),  # new solid component <4 mm
    (6.0, 0.5, "4A"),
    (6.0, 4.0, "4B"),  # new solid component >=4 mm
    (15.0, 9.0, "4B"),
    (5.0, 4.0, "4B"),  # overlap of 'new <6 mm total' and 'new solid >=4 mm': the more suspicious row
]


@pytest.mark.parametrize("total,solid,category", PART_SOLID_NEW, ids=[f"new {t}/{s}->{c}" for t, s, c in PART_SOLID_NEW])
def test_part_solid_new(total, solid, category):
    assert cat(follow_up(nodule("part-solid", total, solid))) == category


# ---- growth: > 1.5 mm increase in mean diameter within 12 months --------------------------------------

SOLID_GROWTH = [
    # prior, now, months, status, category
    (5.0, 6.6, 12, "growing", "4A"),  # growing <8 -> 4A
    (4.0, 5.6, 6, "growing", "4A"),
    (6.3, 7.9, 12, "growing", "4A"),
    (6.4, 8.0, 12, "growing", "4B"),  # growing >=8 -> 4B
    (10.0, 12.0, 3, "growing", "4B"),
    (4.0, 5.5, 12, "stable", "2"),  # +1.5 exactly is not growth; prior 4.0 was category 2
    (5.0, 6.4, 12, "stable", "3"),  # +1.4: not growth, but crosses 6 mm -> re-categorized by size
    (7.5, 8.1, 12, "stable", "4A"),  # crosses 8 mm
    (14.0, 15.2, 12, "stable", "4B"),  # crosses 15 mm
    (5.0, 7.0, 24, "stable", "3"),  # +2.0 over 24 months: outside the 12-month window; crosses 6 mm
    (4.96, 6.54, 12, "stable", "3"),  # reported means 5.0 -> 6.5: +1.5 is not growth (unrounded +1.58)
]


@pytest.mark.parametrize(
    "prior,now,months,status,category", SOLID_GROWTH, ids=[f"{p}->{n} in {m}mo:{c}" for p, n, m, s, c in SOLID_GROWTH]
)
def test_solid_growth_and_size_thresholds(prior, now, months, status, category):
    ev = follow_up(nodule("solid", now), priors={"F1": {"mean_diameter_mm": prior, "interval_months": months}})
    assert ev.facts["F1"].status == status
    assert cat(ev) == category


def test_growth_outside_12_months_is_noted():
    ev = follow_up(nodule("solid", 7.0), priors={"F1": {"mean_diameter_mm": 5.0, "interval_months": 24}})
    assert any("12-month growth window" in n for n in ev.notes)


def test_growth_with_unknown_interval_is_assumed_within_12_months_and_noted():
    ev = follow_up(nodule("solid", 7.0), priors={"F1": {"mean_diameter_mm": 5.0}})
    assert cat(ev) == "4A"
    assert any("interval to the prior not given" in n for n in ev.notes)


PART_SOLID_FOLLOW_UP = [
    # prior (total, solid, type), now (total, solid), category
    ((8.0, 2.0, "part-solid"), (8.5, 3.6), "4A"),  # solid component grows 1.6 mm to <4 mm
    ((9.0, 2.4, "part-solid"), (9.5, 4.0), "4B"),  # ... to >=4 mm
    ((8.0, None, "ground-glass"), (8.0, 3.0), "4A"),  # new solid component <4 mm
    ((8.0, None, "ground-glass"), (8.0, 5.0), "4B"),  # new solid component >=4 mm
    ((10.0, 5.5, "part-solid"), (10.2, 6.2), "4A"),  # not growth, but solid component crosses 6 mm
    ((12.0, 7.5, "part-solid"), (12.0, 8.1), "4B"),  # ... crosses 8 mm
    ((5.5, 2.0, "part-solid"), (6.2, 2.0), "3"),  # total crosses 6 mm with solid <6
]


@pytest.mark.parametrize("prior,now,category", PART_SOLID_FOLLOW_UP, ids=[f"{p}->{n}:{c}" for p, n, c in PART_SOLID_FOLLOW_UP])
def test_part_solid_follow_up(prior, now, category):
    ptotal, psolid, ptype = prior
    ev = follow_up(
        nodule("part-solid", now[0], now[1]),
        priors={"F1": {"mean_diameter_mm": ptotal, "solid_core_mean_diameter_mm": psolid, "type": ptype, "interval_months": 12}},
    )
    assert cat(ev) == category


# ---- stable nodules: stepped management ----------------------------------------------------------------

STEPPED = [
    # type, size, prior category recorded, category now
    ("solid", 9.0, "4A", "3"),  # 4A stable at 3 months -> 3
    ("solid", 7.0, "3", "2"),  # 3 stable at 6 months -> 2
    ("solid", 7.0, "2", "2"),
    ("solid", 16.0, "4B", "4B"),  # 4B stays 4B until proven benign
    ("part-solid", 9.0, "3", "2"),
    ("part-solid", 9.0, "4A", "3"),
    ("ground-glass", 35.0, "3", "2"),
]


@pytest.mark.parametrize("kind,size,prior_cat,category", STEPPED, ids=[f"{k} {p}->{c}" for k, s, p, c in STEPPED])
def test_stable_nodule_stepped_management(kind, size, prior_cat, category):
    solid = 7.0 if kind == "part-solid" and prior_cat == "4A" else (3.0 if kind == "part-solid" else None)
    ev = follow_up(
        nodule(kind, size, solid),
        priors={"F1": {"mean_diameter_mm": size, "solid_core_mean_diameter_mm": solid, "type": kind,
                       "interval_months": 6, "categories": {"lung-rads": prior_cat}}},
    )
    assert ev.facts["F1"].status == "stable"
    assert cat(ev) == category


def test_stable_nodule_without_recorded_prior_category_uses_the_priors_size():
    ev = follow_up(nodule("solid", 9.0), priors={"F1": {"mean_diameter_mm": 9.1, "interval_months": 3}})
    assert ev.facts["F1"].prior_category == "4A"
    assert cat(ev) == "3"
    assert any("prior category not recorded" in n for n in ev.notes)


def test_4B_proven_benign_becomes_2():
    ev = follow_up(
        nodule("solid", 16.0),
        priors={"F1": {"mean_diameter_mm": 16.0, "interval_months": 3, "categories": {"lung-rads": "4B"}}},
        finding_flags={"F1": ["proven_benign"]},
    )
    assert cat(ev) == "2" and ev.categories["F1"].rule_id == "lr-proven-benign"


def test_slow_growth_over_several_exams_is_4B():
    ev = follow_up(
        nodule("solid", 7.0),
        priors={"F1": {"mean_diameter_mm": 6.0, "interval_months": 12, "categories": {"lung-rads": "2"}}},
        finding_flags={"F1": ["slow_growth"]},
    )
    assert cat(ev) == "4B"


def test_prior_attached_to_the_finding_is_used():
    f = nodule("solid", 6.6, prior={"mean_diameter_mm": 5.0, "interval_months": 12})
    ev = evaluate([f], RuleContext(screening=True, exam="follow-up"), LR)
    assert ev.facts["F1"].status == "growing" and cat(ev) == "4A"


def test_exam_inferred_from_priors():
    ev = evaluate([nodule("solid", 6.0, fid="F2")], RuleContext(screening=True, priors={"F1": PriorMeasurement(mean_diameter_mm=5)}), LR)
    assert ev.facts["F2"].status == "new" and cat(ev, "F2") == "4A"
    ev = evaluate([nodule("solid", 6.0)], RuleContext(screening=True), LR)
    assert ev.facts["F1"].status == "baseline" and cat(ev) == "3"


# ---- juxtapleural / perifissural benign-feature rule ----------------------------------------------------

JUXTAPLEURAL = [
    # where, mean, flag set by reader, exam, category
    ("juxtapleural", 9.9, True, "baseline", "2"),
    ("perifissural", 9.9, True, "baseline", "2"),
    ("juxtapleural", 9.94, True, "baseline", "2"),  # 9.9 after rounding
    ("juxtapleural", 9.95, True, "baseline", "4A"),  # 10.0: the size rule applies
    ("juxtapleural", 10.0, True, "baseline", "4A"),
    ("juxtapleural", 7.0, True, "follow-up", "2"),  # new (no prior) <10 mm: 2 instead of 4A
    ("juxtapleural", 9.0, False, "baseline", "4A"),  # smooth margins / shape not confirmed
]


@pytest.mark.parametrize("where,mean,flag,exam,category", JUXTAPLEURAL, ids=[f"{w} {m} flag={f} {e}->{c}" for w, m, f, e, c in JUXTAPLEURAL])
def test_juxtapleural_rule(where, mean, flag, exam, category):
    f = nodule("solid", mean, **{where: True})
    flags = {"F1": ["smooth_benign_shape"]} if flag else {}
    ev = evaluate([f], RuleContext(screening=True, exam=exam, finding_flags=flags), LR)
    assert cat(ev) == category


def test_juxtapleural_rule_is_for_solid_nodules_only():
    f = nodule("part-solid", 9.0, 6.5, juxtapleural=True)
    ev = evaluate([f], RuleContext(screening=True, finding_flags={"F1": ["smooth_benign_shape"]}), LR)
    assert cat(ev) == "4A"


def test_juxtapleural_rule_not_for_growing_nodules():
    f = nodule("solid", 7.0, juxtapleural=True)
    ctx = RuleContext(screening=True, exam="follow-up", finding_flags={"F1": ["smooth_benign_shape"]},
                      priors={"F1": PriorMeasurement(mean_diameter_mm=5.0, interval_months=12)})
    assert cat(evaluate([f], ctx, LR)) == "4A"


# ---- reader flags: category 1, 4X ------------------------------------------------------------------------


def test_benign_calcification_is_category_1():
    ev = baseline(nodule("solid", 12.0), finding_flags={"F1": ["benign_calcification"]})
    assert cat(ev) == "1" and ev.study.value == "1"


@pytest.mark.parametrize("mean,category", [(5.0, "2"), (7.0, "4X"), (9.0, "4X"), (16.0, "4X")])
def test_4X_needs_category_3_or_4_and_the_flag(mean, category):
    ev = baseline(nodule("solid", mean), finding_flags={"F1": ["additional_suspicious_features"]})
    assert cat(ev) == category
    if category == "4X":
        assert ev.categories["F1"].rule_id.endswith("+additional_suspicious_features")


# ---- study level ---------------------------------------------------------------------------------------


def test_exam_category_is_the_highest_nodule_category():
    ev = baseline(nodule("solid", 5.0, fid="F1"), nodule("solid", 9.0, fid="F2"), nodule("ground-glass", 12.0, fid="F3"))
    assert [cat(ev, f) for f in ("F1", "F2", "F3")] == ["2", "4A", "2"]
    assert ev.study.value == "4A" and ev.deciding_finding == "F2"
    assert ev.study.follow_up_months == 3
    assert "3 months" in ev.study.recommendation


def test_4X_outranks_4B():
    ev = baseline(nodule("solid", 16.0, fid="F1"), nodule("solid", 9.0, fid="F2"),
                  finding_flags={"F2": ["additional_suspicious_features"]})
    assert ev.study.value == "4X" and ev.deciding_finding == "F2"


def test_no_nodules_is_category_1():
    ev = baseline()
    assert ev.study.value == "1" and ev.study.follow_up_months == 12


def test_only_nodule_findings_are_judged_and_rejected_ones_ignored():
    other = Finding(id="F9", label="Left hippocampus", mean_diameter_mm=30.0)
    rejected = nodule("solid", 20.0, fid="F2", status="rejected")
    ev = baseline(nodule("solid", 5.0), other, rejected)
    assert set(ev.categories) == {"F1"} and ev.study.value == "2"


def test_incomplete_exam_is_category_0():
    ev = baseline(nodule("solid", 9.0), incomplete_reason="prior chest CT being located for comparison")
    assert ev.study.value == "0"
    assert "prior chest CT being located" in ev.study.recommendation


def test_S_modifier():
    ev = baseline(nodule("solid", 9.0), significant_other_findings=True)
    assert ev.study.value == "4AS"
    assert cat(ev) == "4A"


def test_unknown_type_is_not_assessable_and_said_so():
    ev = baseline(nodule("", 9.0), nodule("solid", 5.0, fid="F2"))
    assert cat(ev) == NOT_ASSESSABLE and "type" in ev.categories["F1"].recommendation
    assert ev.study.value == "2"  # from the assessable nodule ...
    assert any("F1 not assessable" in n for n in ev.notes)  # ... with a visible caveat


# ---- applicability ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("screening,phrase", [(False, "incidental"), (None, "not known to be a screening exam")])
def test_lung_rads_not_applicable_outside_screening(screening, phrase):
    ev = evaluate([nodule("solid", 9.0)], RuleContext(screening=screening), LR)
    assert not ev.applicable
    assert ev.study.value == NOT_APPLICABLE and cat(ev) == NOT_APPLICABLE
    assert phrase in ev.reason and phrase in ev.categories["F1"].recommendation


def test_apply_to_result_fills_findings_json_fields():
    result = AnalysisResult(findings=[nodule("solid", 9.0), nodule("solid", 5.0, fid="F2")])
    ctx = RuleContext(screening=True, age_years=64)
    evaluate(result.findings, ctx, LR).apply_to(result, ctx)
    data = result.to_json()
    assert data["findings"][0]["categories"][0]["value"] == "4A"
    assert data["findings"][1]["categories"][0]["value"] == "2"
    assert data["study_categories"] == [
        {"system": "Lung-RADS", "version": "v2022", "value": "4A", "recommendation": result.study_categories[0].recommendation,
         "follow_up_months": 3.0, "rule_id": "lr-solid-baseline-4A", "codes": []}
    ]
    assert data["rules"] == [{"id": "lung-rads", "version": "v2022"}]
    assert data["context"] == {"age_years": 64.0, "screening": True}
    # applying again replaces, never duplicates
    evaluate(result.findings, ctx, LR).apply_to(result, ctx)
    assert len(result.findings[0].categories) == 1 and len(result.study_categories) == 1


# ---- every row of the table has an example that it decides ------------------------------------------

P12 = {"interval_months": 12}
ROW_EXAMPLES = {
    # row id: (type, mean, solid, exam, prior measurement or None, reader flags, finding extras)
    "lr-benign-calcification": ("solid", 12.0, None, "baseline", None, ["benign_calcification"], {}),
    "lr-juxtapleural-benign": ("solid", 8.0, None, "baseline", None, ["smooth_benign_shape"], {"juxtapleural": True}),
    "lr-proven-benign": ("solid", 16.0, None, "follow-up", {"mean_diameter_mm": 16.0, "categories": {"lung-rads": "4B"}, **P12}, ["proven_benign"], {}),
    "lr-slow-growth": ("solid", 6.5, None, "follow-up", {"mean_diameter_mm": 6.0, **P12}, ["slow_growth"], {}),
    "lr-solid-baseline-4B": ("solid", 15.0, None, "baseline", None, [], {}),
    "lr-solid-baseline-4A": ("solid", 8.0, None, "baseline", None, [], {}),
    "lr-solid-baseline-3": ("solid", 6.0, None, "baseline", None, [], {}),
    "lr-solid-baseline-2": ("solid", 5.9, None, "baseline", None, [], {}),
    "lr-solid-new-4B": ("solid", 8.0, None, "follow-up", None, [], {}),
    "lr-solid-new-4A": ("solid", 6.0, None, "follow-up", None, [], {}),
    "lr-solid-new-3": ("solid", 4.0, None, "follow-up", None, [], {}),
    "lr-solid-new-2": ("solid", 3.9, None, "follow-up", None, [], {}),
    "lr-solid-growing-4B": ("solid", 8.0, None, "follow-up", {"mean_diameter_mm": 6.4, **P12}, [], {}),
    "lr-solid-growing-4A": ("solid", 7.9, None, "follow-up", {"mean_diameter_mm": 6.3, **P12}, [], {}),
    "lr-solid-threshold-4B": ("solid", 15.0, None, "follow-up", {"mean_diameter_mm": 14.0, **P12}, [], {}),
    "lr-solid-threshold-4A": ("solid", 8.0, None, "follow-up", {"mean_diameter_mm": 7.5, **P12}, [], {}),
    "lr-solid-threshold-3": ("solid", 6.0, None, "follow-up", {"mean_diameter_mm": 5.5, **P12}, [], {}),
    "lr-partsolid-baseline-4B": ("part-solid", 10.0, 8.0, "baseline", None, [], {}),
    "lr-partsolid-baseline-4A": ("part-solid", 10.0, 6.0, "baseline", None, [], {}),
    "lr-partsolid-baseline-3": ("part-solid", 6.0, 5.9, "baseline", None, [], {}),
    "lr-partsolid-baseline-2": ("part-solid", 5.9, 3.0, "baseline", None, [], {}),
    "lr-partsolid-new-4B": ("part-solid", 8.0, 4.0, "follow-up", None, [], {}),
    "lr-partsolid-new-3": ("part-solid", 5.9, 3.0, "follow-up", None, [], {}),
    "lr-partsolid-new-4A": ("part-solid", 6.0, 3.9, "follow-up", None, [], {}),
    "lr-partsolid-growing-4B": ("part-solid", 9.0, 4.0, "follow-up", {"mean_diameter_mm": 9.0, "solid_core_mean_diameter_mm": 2.4, "type": "part-solid", **P12}, [], {}),
    "lr-partsolid-growing-4A": ("part-solid", 9.0, 3.9, "follow-up", {"mean_diameter_mm": 9.0, "solid_core_mean_diameter_mm": 2.3, "type": "part-solid", **P12}, [], {}),
    "lr-partsolid-threshold-4B": ("part-solid", 12.0, 8.0, "follow-up", {"mean_diameter_mm": 12.0, "solid_core_mean_diameter_mm": 7.5, "type": "part-solid", **P12}, [], {}),
    "lr-partsolid-threshold-4A": ("part-solid", 10.0, 6.0, "follow-up", {"mean_diameter_mm": 10.0, "solid_core_mean_diameter_mm": 5.5, "type": "part-solid", **P12}, [], {}),
    "lr-partsolid-threshold-3": ("part-solid", 6.0, 2.0, "follow-up", {"mean_diameter_mm": 5.5, "solid_core_mean_diameter_mm": 2.0, "type": "part-solid", **P12}, [], {}),
    "lr-stable-after-4B": ("solid", 16.0, None, "follow-up", {"mean_diameter_mm": 16.0, "categories": {"lung-rads": "4B"}, **P12}, [], {}),
    "lr-stable-after-4A": ("solid", 9.0, None, "follow-up", {"mean_diameter_mm": 9.0, "categories": {"lung-rads": "4A"}, **P12}, [], {}),
    "lr-stable-after-3": ("solid", 7.0, None, "follow-up", {"mean_diameter_mm": 7.0, "categories": {"lung-rads": "3"}, **P12}, [], {}),
    "lr-stable-after-2": ("solid", 5.0, None, "follow-up", {"mean_diameter_mm": 5.0, **P12}, [], {}),
    "lr-gg-baseline-new-3": ("ground-glass", 30.0, None, "baseline", None, [], {}),
    "lr-gg-baseline-new-2": ("ground-glass", 29.9, None, "baseline", None, [], {}),
    "lr-gg-threshold-3": ("ground-glass", 30.0, None, "follow-up", {"mean_diameter_mm": 29.9, **P12}, [], {}),
    "lr-gg-followup-2": ("ground-glass", 31.0, None, "follow-up", {"mean_diameter_mm": 31.0, **P12}, [], {}),
}


def test_every_row_has_an_example():
    assert set(ROW_EXAMPLES) == {r.id for r in LR.rows}


@pytest.mark.parametrize("row_id", list(ROW_EXAMPLES))
def test_row_decides_its_example(row_id):
    kind, mean, solid, exam, prior, flags, extra = ROW_EXAMPLES[row_id]
    ctx = RuleContext(screening=True, exam=exam, priors={"F1": PriorMeasurement(**prior)} if prior else {},
                      finding_flags={"F1": flags} if flags else {})
    ev = evaluate([nodule(kind, mean, solid, **extra)], ctx, LR)
    row = next(r for r in LR.rows if r.id == row_id)
    assert ev.categories["F1"].rule_id == row_id
    assert ev.categories["F1"].value == row.category
    assert ev.categories["F1"].recommendation == LR.category(row.category).recommendation
