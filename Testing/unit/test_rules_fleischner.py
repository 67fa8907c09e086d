"""Fleischner Society 2017 (incidental nodules), Table 1 cell by cell and boundary by boundary.

Sizes are the mean of long and short axis rounded to the nearest whole mm, half up: <6 mm means
5.49 mm or less as measured, 6-8 mm means 5.5 to 8.49 mm, >8 mm means 8.5 mm or more.
"""

from __future__ import annotations

import pytest

from MedImgAILib.results import Finding
from MedImgAILib.rules import NOT_APPLICABLE, NOT_ASSESSABLE, RuleContext, evaluate, load_rule_set

FL = load_rule_set("fleischner-2017")


def nodule(kind: str, mean: float | None, solid: float | None = None, fid: str = "F1") -> Finding:
    return Finding(id=fid, label="nodule", type=kind, mean_diameter_mm=mean, solid_core_mean_diameter_mm=solid)


def incidental(*findings: Finding, risk: str | None = "low", age: float | None = 60, **ctx):
    return evaluate(list(findings), RuleContext(screening=False, age_years=age, risk=risk, **ctx), FL)


def test_rule_set_identity_and_conventions():
    assert (FL.id, FL.version, FL.system) == ("fleischner-2017", "2017", "Fleischner")
    assert "MacMahon" in FL.source and "Radiology 2017;284" in FL.source and "228-243" in FL.source
    assert FL.measurement.decimals == 0 and FL.measurement.rounding == "half-up"
    assert FL.applicability.min_age_years == 35


# ---- solid, single -----------------------------------------------------------------------------------

SOLID_SINGLE = [
    # measured mean, risk, cell, follow-up months (earliest), recommendation fragment
    (3.0, "low", "Solid single <6 mm, low risk", None, "No routine follow-up"),
    (5.49, "low", "Solid single <6 mm, low risk", None, "No routine follow-up"),
    (5.49, "high", "Solid single <6 mm, high risk", 12, "Optional CT at 12 months"),
    (5.5, "low", "Solid single 6-8 mm, low risk", 6, "CT at 6-12 months, then consider CT at 18-24 months"),
    (5.5, "high", "Solid single 6-8 mm, high risk", 6, "CT at 6-12 months, then CT at 18-24 months"),
    (6.5, "low", "Solid single 6-8 mm, low risk", 6, "6-12 months"),  # 7 (half-up; banker's would give 6)
    (8.49, "low", "Solid single 6-8 mm, low risk", 6, "6-12 months"),
    (8.49, "high", "Solid single 6-8 mm, high risk", 6, "6-12 months"),
    (8.5, "low", "Solid single >8 mm", 3, "Consider CT at 3 months, PET/CT, or tissue sampling"),  # 9 (banker's: 8)
    (8.5, "high", "Solid single >8 mm", 3, "PET/CT"),
    (25.0, "low", "Solid single >8 mm", 3, "tissue sampling"),
]


@pytest.mark.parametrize(
    "mean,risk,cell,months,text", SOLID_SINGLE, ids=[f"{m}mm {r}->{c}" for m, r, c, _, _ in SOLID_SINGLE]
)
def test_solid_single(mean, risk, cell, months, text):
    ev = incidental(nodule("solid", mean), risk=risk)
    c = ev.categories["F1"]
    assert (c.system, c.version, c.value, c.follow_up_months) == ("Fleischner", "2017", cell, months)
    assert text in c.recommendation
    assert ev.study.value == cell


@pytest.mark.parametrize("measured,rounded", [(5.49, 5), (5.5, 6), (6.5, 7), (7.5, 8), (8.49, 8), (8.5, 9)])
def test_rounding_to_whole_mm_half_up(measured, rounded):
    assert incidental(nodule("solid", measured)).facts["F1"].mean_diameter_mm == rounded


def test_follow_up_range_is_in_the_rule_set():
    c = FL.category("Solid single 6-8 mm, low risk")
    assert (c.follow_up_months, c.follow_up_months_max) == (6, 12)


# ---- solid, multiple -----------------------------------------------------------------------------------

SOLID_MULTIPLE = [
    (5.49, "low", "Solid multiple <6 mm, low risk", None, "No routine follow-up"),
    (5.49, "high", "Solid multiple <6 mm, high risk", 12, "Optional CT at 12 months"),
    (5.5, "low", "Solid multiple 6-8 mm, low risk", 3, "CT at 3-6 months, then consider CT at 18-24 months"),
    (8.49, "high", "Solid multiple 6-8 mm, high risk", 3, "CT at 3-6 months, then CT at 18-24 months"),
    (8.5, "low", "Solid multiple >8 mm, low risk", 3, "CT at 3-6 months, then consider CT at 18-24 months"),
    (8.5, "high", "Solid multiple >8 mm, high risk", 3, "CT at 3-6 months, then CT at 18-24 months"),
]


@pytest.mark.parametrize(
    "mean,risk,cell,months,text", SOLID_MULTIPLE, ids=[f"{m}mm {r}->{c}" for m, r, c, _, _ in SOLID_MULTIPLE]
)
def test_solid_multiple(mean, risk, cell, months, text):
    ev = incidental(nodule("solid", mean, fid="F1"), nodule("solid", 3.0, fid="F2"), risk=risk)
    c = ev.categories["F1"]
    assert (c.value, c.follow_up_months) == (cell, months)
    assert text in c.recommendation
    assert ev.facts["F1"].multiplicity == "multiple"


def test_most_suspicious_nodule_guides_management():
    ev = incidental(nodule("solid", 4.0, fid="F1"), nodule("solid", 10.0, fid="F2"), nodule("solid", 7.0, fid="F3"), risk="high")
    assert ev.study.value == "Solid multiple >8 mm, high risk" and ev.deciding_finding == "F2"


def test_equal_cells_the_larger_nodule_decides():
    ev = incidental(nodule("solid", 6.0, fid="F1"), nodule("solid", 8.0, fid="F2"))
    assert ev.categories["F1"].value == ev.categories["F2"].value
    assert ev.deciding_finding == "F2"


# ---- subsolid, single ------------------------------------------------------------------------------------

SUBSOLID_SINGLE = [
    # type, total, solid component, cell, earliest follow-up
    ("ground-glass", 5.49, None, "Ground-glass single <6 mm", None),
    ("ground-glass", 5.5, None, "Ground-glass single >=6 mm", 6),
    ("ground-glass", 40.0, None, "Ground-glass single >=6 mm", 6),
    ("part-solid", 5.49, 2.0, "Part-solid single <6 mm", None),
    ("part-solid", 5.5, 2.0, "Part-solid single >=6 mm", 3),
    ("part-solid", 9.0, 5.49, "Part-solid single >=6 mm", 3),  # solid component 5 mm
    ("part-solid", 9.0, None, "Part-solid single >=6 mm", 3),  # solid component not measured
    ("part-solid", 9.0, 5.5, "Part-solid single >=6 mm, solid component >=6 mm", 3),  # 6 mm: highly suspicious
]


@pytest.mark.parametrize(
    "kind,total,solid,cell,months", SUBSOLID_SINGLE, ids=[f"{k} {t}/{s}->{c}" for k, t, s, c, _ in SUBSOLID_SINGLE]
)
@pytest.mark.parametrize("risk", ["low", "high"])
def test_subsolid_single_same_for_both_risks(kind, total, solid, cell, months, risk):
    ev = incidental(nodule(kind, total, solid), risk=risk)
    assert (ev.categories["F1"].value, ev.categories["F1"].follow_up_months) == (cell, months)


def test_subsolid_recommendation_texts():
    gg = incidental(nodule("ground-glass", 7.0)).categories["F1"].recommendation
    assert "6-12 months" in gg and "every 2 years until 5 years" in gg
    ps = incidental(nodule("part-solid", 7.0, 3.0)).categories["F1"].recommendation
    assert "3-6 months" in ps and "annual CT for 5 years" in ps
    hs = incidental(nodule("part-solid", 9.0, 7.0)).categories["F1"].recommendation
    assert "highly suspicious" in hs


# ---- subsolid, multiple ----------------------------------------------------------------------------------

SUBSOLID_MULTIPLE = [
    # two subsolid nodules: (type, mean) each -> cells
    (("ground-glass", 4.0), ("ground-glass", 5.49), "Subsolid multiple <6 mm", "Subsolid multiple <6 mm"),
    (("ground-glass", 5.5), ("part-solid", 4.0), "Subsolid multiple >=6 mm", "Subsolid multiple <6 mm"),
    (("part-solid", 12.0), ("ground-glass", 20.0), "Subsolid multiple >=6 mm", "Subsolid multiple >=6 mm"),
]


@pytest.mark.parametrize("a,b,cell_a,cell_b", SUBSOLID_MULTIPLE, ids=[f"{a}+{b}" for a, b, _, _ in SUBSOLID_MULTIPLE])
def test_subsolid_multiple(a, b, cell_a, cell_b):
    ev = incidental(nodule(a[0], a[1], 3.0 if a[0] == "part-solid" else None, fid="F1"),
                    nodule(b[0], b[1], 2.0 if b[0] == "part-solid" else None, fid="F2"))
    assert (ev.categories["F1"].value, ev.categories["F2"].value) == (cell_a, cell_b)
    assert ev.categories["F1"].follow_up_months == 3
    rec = FL.category("Subsolid multiple <6 mm").recommendation
    assert "consider CT at 2 and 4 years" in rec
    assert "most suspicious nodule" in FL.category("Subsolid multiple >=6 mm").recommendation


def test_single_or_multiple_is_counted_within_solid_and_subsolid():
    ev = incidental(nodule("solid", 7.0, fid="F1"), nodule("ground-glass", 7.0, fid="F2"))
    assert ev.categories["F1"].value == "Solid single 6-8 mm, low risk"
    assert ev.categories["F2"].value == "Ground-glass single >=6 mm"
    assert ev.study.value == "Solid single 6-8 mm, low risk"  # 6-12 months for both; the solid row ranks higher


def test_part_solid_outranks_solid_6_to_8():
    ev = incidental(nodule("solid", 7.0, fid="F1"), nodule("part-solid", 7.0, 2.0, fid="F2"))
    assert ev.study.value == "Part-solid single >=6 mm" and ev.deciding_finding == "F2"


# ---- every row has an example --------------------------------------------------------------------------

ROW_EXAMPLES = {
    # row id: (nodules as (type, mean, solid), risk)
    "fl-solid-single-gt8": ([("solid", 8.5, None)], "low"),
    "fl-solid-single-6to8-high": ([("solid", 8.49, None)], "high"),
    "fl-solid-single-6to8-low": ([("solid", 5.5, None)], "low"),
    "fl-solid-single-lt6-high": ([("solid", 5.49, None)], "high"),
    "fl-solid-single-lt6-low": ([("solid", 5.49, None)], "low"),
    "fl-solid-multiple-gt8-high": ([("solid", 8.5, None), ("solid", 2.0, None)], "high"),
    "fl-solid-multiple-gt8-low": ([("solid", 8.5, None), ("solid", 2.0, None)], "low"),
    "fl-solid-multiple-6to8-high": ([("solid", 5.5, None), ("solid", 2.0, None)], "high"),
    "fl-solid-multiple-6to8-low": ([("solid", 8.49, None), ("solid", 2.0, None)], "low"),
    "fl-solid-multiple-lt6-high": ([("solid", 5.49, None), ("solid", 2.0, None)], "high"),
    "fl-solid-multiple-lt6-low": ([("solid", 5.49, None), ("solid", 2.0, None)], "low"),
    "fl-partsolid-single-ge6-solid-ge6": ([("part-solid", 6.0, 5.5)], "low"),
    "fl-partsolid-single-ge6": ([("part-solid", 5.5, 5.49)], "low"),
    "fl-partsolid-single-lt6": ([("part-solid", 5.49, 2.0)], "low"),
    "fl-gg-single-ge6": ([("ground-glass", 5.5, None)], "low"),
    "fl-gg-single-lt6": ([("ground-glass", 5.49, None)], "low"),
    "fl-subsolid-multiple-ge6": ([("ground-glass", 5.5, None), ("part-solid", 3.0, 1.0)], "low"),
    "fl-subsolid-multiple-lt6": ([("ground-glass", 5.49, None), ("part-solid", 3.0, 1.0)], "low"),
}


def test_every_row_has_an_example():
    assert set(ROW_EXAMPLES) == {r.id for r in FL.rows}


@pytest.mark.parametrize("row_id", list(ROW_EXAMPLES))
def test_row_decides_its_example(row_id):
    nodules, risk = ROW_EXAMPLES[row_id]
    ev = incidental(*[nodule(k, m, s, fid=f"F{i + 1}") for i, (k, m, s) in enumerate(nodules)], risk=risk)
    assert ev.categories["F1"].rule_id == row_id
    row = next(r for r in FL.rows if r.id == row_id)
    assert ev.categories["F1"].value == row.category


# ---- applicability: never an answer where the guideline does not apply ---------------------------------

NOT_FOR = [
    # context, phrase in the reason
    ({"screening": True, "age_years": 60}, "lung cancer screening"),
    ({"screening": False, "age_years": 34.9}, "younger than 35"),
    ({"screening": False, "age_years": 18}, "younger than 35"),
    ({"screening": False, "age_years": 60, "known_cancer": True}, "known cancer"),
    ({"screening": False, "age_years": 60, "immunocompromised": True}, "immunocompromised"),
]


@pytest.mark.parametrize("ctx,phrase", NOT_FOR, ids=[p for _, p in NOT_FOR])
def test_not_applicable(ctx, phrase):
    ev = evaluate([nodule("solid", 9.0, fid="F1"), nodule("ground-glass", 7.0, fid="F2")], RuleContext(**ctx), FL)
    assert not ev.applicable and phrase in ev.reason
    assert ev.study.value == NOT_APPLICABLE and phrase in ev.study.recommendation
    assert {c.value for c in ev.categories.values()} == {NOT_APPLICABLE}
    assert all(c.follow_up_months is None for c in ev.categories.values())


def test_age_35_applies():
    assert incidental(nodule("solid", 7.0), age=35).applicable


def test_false_exclusions_apply():
    ev = incidental(nodule("solid", 7.0), known_cancer=False, immunocompromised=False)
    assert ev.applicable and not ev.notes


def test_unknown_age_and_screening_apply_with_notes():
    ev = evaluate([nodule("solid", 7.0)], RuleContext(risk="low"), FL)
    assert ev.applicable
    assert any("assumed incidental" in n for n in ev.notes)
    assert any("age not known" in n for n in ev.notes)


def test_unknown_risk_shows_the_high_risk_cell_and_says_so():
    ev = incidental(nodule("solid", 7.0), risk=None)
    assert ev.categories["F1"].value == "Solid single 6-8 mm, high risk"
    assert any("risk not given" in n for n in ev.notes)


def test_no_nodules_is_not_applicable_with_reason():
    ev = incidental()
    assert ev.study.value == NOT_APPLICABLE and "no pulmonary nodule" in ev.study.recommendation


def test_nodule_without_size_is_not_assessable():
    ev = incidental(nodule("solid", None))
    assert ev.categories["F1"].value == NOT_ASSESSABLE and "no mean diameter" in ev.categories["F1"].recommendation


def test_follow_up_exam_uses_the_same_table_without_lung_rads_notes():
    ctx = RuleContext(screening=False, age_years=60, risk="low", exam="follow-up",
                      priors={"F1": {"mean_diameter_mm": 6.0, "interval_months": 12}})
    ev = evaluate([nodule("solid", 7.0)], ctx, FL)
    assert ev.categories["F1"].value == "Solid single 6-8 mm, low risk"
    assert ev.notes == []
