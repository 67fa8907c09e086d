"""Applying a rule set to the findings of one study.

For each finding the engine derives the facts a guideline talks about (nodule type, the size rounded
as the guideline says, solid component, new / growing / stable against the matched prior, prior
category, single or multiple, risk), finds the first row of the rule set's table whose conditions
hold, and reports that row's category. The study category is the most suspicious finding's (highest
rank). Where the rule set does not apply to the patient or exam, every finding and the study get
"not applicable" with the reason; a finding lacking a measurement a row needs gets "not assessable".
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, Optional

from pydantic import BaseModel, Field, ValidationError

from ..results import AnalysisResult, Category, Finding, RuleRef
from .context import PriorMeasurement, RuleContext
from .schema import NOT_APPLICABLE, NOT_ASSESSABLE, Range, Row, RuleSet, When

# --------------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------------

_TYPE_ALIASES = {
    "solid": "solid",
    "part-solid": "part-solid",
    "part solid": "part-solid",
    "partsolid": "part-solid",
    "part_solid": "part-solid",
    "semi-solid": "part-solid",
    "mixed": "part-solid",
    "ground-glass": "ground-glass",
    "ground glass": "ground-glass",
    "groundglass": "ground-glass",
    "ground_glass": "ground-glass",
    "ggn": "ground-glass",
    "ggo": "ground-glass",
    "non-solid": "ground-glass",
    "nonsolid": "ground-glass",
    "non solid": "ground-glass",
}


def normalize_type(text: str | None) -> Optional[str]:
    """The guideline's nodule type from a Finding.type string; None when the model could not tell."""
    if not text:
        return None
    return _TYPE_ALIASES.get(text.strip().lower())


def round_half_up(value: float, decimals: int) -> float:
    """Round as a radiologist does on paper (5.95 -> 6.0, 5.5 -> 6), not as binary floats do
    (``round(5.95, 1)`` is 5.9 and ``round(5.5)`` is 6 but ``round(6.5)`` is 6)."""
    q = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(float(value))).quantize(q, rounding=ROUND_HALF_UP))


def _family(nodule_type: Optional[str]) -> Optional[str]:
    if nodule_type is None:
        return None
    return "solid" if nodule_type == "solid" else "subsolid"


class Facts(BaseModel):
    """What the table is matched against, for one finding (kept in the result for audit)."""

    nodule_type: Optional[str] = None
    mean_diameter_mm: Optional[float] = None  # rounded as the rule set says
    solid_component_mm: Optional[float] = None
    status: Optional[str] = None
    prior_mean_diameter_mm: Optional[float] = None
    prior_solid_component_mm: Optional[float] = None
    prior_category: Optional[str] = None
    growth_mm: Optional[float] = None
    interval_months: Optional[float] = None
    juxtapleural: Optional[bool] = None
    flags: list[str] = Field(default_factory=list)
    multiplicity: Optional[str] = None
    risk: Optional[str] = None


def _mean_diameter(f: Finding) -> Optional[float]:
    if f.mean_diameter_mm is not None:
        return f.mean_diameter_mm
    if f.long_axis_mm is not None and f.short_axis_mm is not None:
        return (f.long_axis_mm + f.short_axis_mm) / 2.0
    return None


def _prior_for(f: Finding, ctx: RuleContext) -> Optional[PriorMeasurement]:
    if f.id in ctx.priors:
        return ctx.priors[f.id]
    if f.prior:  # prior matching may have attached it to the finding itself
        try:
            return PriorMeasurement.model_validate(f.prior)
        except ValidationError:
            return None
    return None


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


class StudyEvaluation(BaseModel):
    rule_set: RuleRef
    system: str
    applicable: bool
    #: why not applicable (empty when applicable)
    reason: str = ""
    #: finding id -> its category (only findings the rule set judges, e.g. nodules)
    categories: dict[str, Category] = Field(default_factory=dict)
    study: Category
    #: finding whose category decided the study category, when one did
    deciding_finding: Optional[str] = None
    facts: dict[str, Facts] = Field(default_factory=dict)
    #: assumptions and caveats a reader must see (risk assumed, interval unknown, ...)
    notes: list[str] = Field(default_factory=list)

    def apply_to(self, result: AnalysisResult, context: RuleContext | None = None) -> AnalysisResult:
        """Write these categories into ``result`` (replacing this system's earlier ones)."""
        for f in result.findings:
            f.categories = [c for c in f.categories if c.system != self.system]
            if f.id in self.categories:
                f.categories.append(self.categories[f.id])
        result.study_categories = [c for c in result.study_categories if c.system != self.system]
        result.study_categories.append(self.study)
        result.rules = [r for r in result.rules if r.id != self.rule_set.id] + [self.rule_set]
        result.warnings.extend(f"{self.system}: {n}" for n in self.notes if f"{self.system}: {n}" not in result.warnings)
        if context is not None:
            result.context = context.public_dict()
        return result


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------


def _not_applicable_reason(rs: RuleSet, ctx: RuleContext, notes: list[str]) -> str:
    app = rs.applicability
    if app.screening == "required" and ctx.screening is not True:
        if ctx.screening is None:
            return (f"{rs.system} applies to lung cancer screening CT only, and this exam is not known to be a "
                    "screening exam (give screening=true if it is)")
        return f"{rs.system} applies to lung cancer screening CT only; this exam is incidental (screening=false)"
    if app.screening == "excluded":
        if ctx.screening is True:
            return f"{rs.system} does not apply to lung cancer screening exams (use Lung-RADS)"
        if ctx.screening is None:
            notes.append("exam assumed incidental (not screening): screening was not stated")
    if app.min_age_years is not None:
        if ctx.age_years is None:
            notes.append(f"patient age not known: {rs.system} applies only from age {app.min_age_years:g}")
        elif ctx.age_years < app.min_age_years:
            return f"{rs.system} does not apply to patients younger than {app.min_age_years:g} (age {ctx.age_years:g})"
    for flag in app.excluded_if:
        if getattr(ctx, flag) is True:
            words = {"known_cancer": "patients with a known cancer", "immunocompromised": "immunocompromised patients"}
            return f"{rs.system} does not apply to {words[flag]}"
    return ""


def _judged(rs: RuleSet, findings: Iterable[Finding]) -> list[Finding]:
    labels = {label.lower() for label in rs.applicability.finding_labels}
    return [f for f in findings if f.label.strip().lower() in labels and f.status != "rejected"]


def _matches(when: When, facts: Facts) -> bool:
    def in_range(r: Optional[Range], x: Optional[float]) -> bool:
        return r is None or (x is not None and r.contains(x))

    if when.nodule_type is not None and facts.nodule_type not in when.nodule_type:
        return False
    if when.status is not None and facts.status not in when.status:
        return False
    if not in_range(when.mean_diameter_mm, facts.mean_diameter_mm):
        return False
    if not in_range(when.solid_component_mm, facts.solid_component_mm):
        return False
    if not in_range(when.prior_mean_diameter_mm, facts.prior_mean_diameter_mm):
        return False
    if not in_range(when.prior_solid_component_mm, facts.prior_solid_component_mm):
        return False
    if when.prior_category is not None and facts.prior_category not in when.prior_category:
        return False
    if when.juxtapleural is not None and facts.juxtapleural is not when.juxtapleural:
        return False
    if when.flags is not None and not set(when.flags) <= set(facts.flags):
        return False
    if when.multiplicity is not None and facts.multiplicity != when.multiplicity:
        return False
    if when.risk is not None and facts.risk != when.risk:
        return False
    return True


def _first_row(rs: RuleSet, facts: Facts) -> Optional[Row]:
    for row in rs.rows:
        if _matches(row.when, facts):
            return row
    return None


def _category(rs: RuleSet, value: str, rule_id: str, recommendation: str | None = None) -> Category:
    c = rs.category(value)
    return Category(
        system=rs.system,
        version=rs.version,
        value=c.value,
        recommendation=recommendation if recommendation is not None else c.recommendation,
        follow_up_months=c.follow_up_months,
        rule_id=rule_id,
        codes=list(c.codes),
    )


def _plain(rs: RuleSet, value: str, reason: str, rule_id: str) -> Category:
    return Category(system=rs.system, version=rs.version, value=value, recommendation=reason, rule_id=rule_id)


def _missing_reason(facts: Facts) -> str:
    missing = []
    if facts.nodule_type is None:
        missing.append("nodule type (solid / part-solid / ground-glass) not known")
    if facts.mean_diameter_mm is None:
        missing.append("no mean diameter")
    if facts.nodule_type == "part-solid" and facts.solid_component_mm is None:
        missing.append("solid component not measured")
    if not missing:
        missing.append(f"no row matches ({facts.model_dump(exclude_none=True, exclude_defaults=True)})")
    return "; ".join(missing)


def _prior_category(rs: RuleSet, prior: PriorMeasurement, facts: Facts, fid: str, notes: list[str]) -> Optional[str]:
    """The prior's category under this rule set: as recorded, else the baseline category of its size."""
    if rs.id in prior.categories:
        return prior.categories[rs.id]
    if facts.prior_mean_diameter_mm is None:
        return None
    prior_facts = Facts(
        nodule_type=normalize_type(prior.type) or facts.nodule_type,
        mean_diameter_mm=facts.prior_mean_diameter_mm,
        solid_component_mm=facts.prior_solid_component_mm,
        status="baseline",
        juxtapleural=facts.juxtapleural,
        flags=[f for f in facts.flags if f in ("smooth_benign_shape", "benign_calcification")],
        multiplicity=facts.multiplicity,
        risk=facts.risk,
    )
    row = _first_row(rs, prior_facts)
    if row is None:
        return None
    notes.append(f"{fid}: prior category not recorded; taken as {row.category} from the prior's size (row {row.id})")
    return row.category


def _facts(rs: RuleSet, f: Finding, ctx: RuleContext, notes: list[str]) -> Facts:
    d = rs.measurement.decimals
    nodule_type = normalize_type(f.type)
    mean = _mean_diameter(f)
    facts = Facts(
        nodule_type=nodule_type,
        mean_diameter_mm=round_half_up(mean, d) if mean is not None else None,
        solid_component_mm=(
            round_half_up(f.solid_core_mean_diameter_mm, d) if f.solid_core_mean_diameter_mm is not None else None
        ),
        flags=sorted(set(ctx.finding_flags.get(f.id, []))),
    )
    if f.juxtapleural is True or f.perifissural is True:
        facts.juxtapleural = True
    elif f.juxtapleural is False or f.perifissural is False:
        facts.juxtapleural = False

    if ctx.effective_exam() == "baseline":
        facts.status = "baseline"
        return facts
    prior = _prior_for(f, ctx)
    if prior is None:
        facts.status = "new"
        return facts
    if prior.mean_diameter_mm is not None:
        facts.prior_mean_diameter_mm = round_half_up(prior.mean_diameter_mm, d)
    if prior.solid_core_mean_diameter_mm is not None:
        facts.prior_solid_component_mm = round_half_up(prior.solid_core_mean_diameter_mm, d)
    facts.interval_months = prior.interval_months
    facts.status = _growth_status(rs, f.id, facts, prior, notes)
    uses_prior_category = any(r.when.prior_category for r in rs.rows)
    if facts.status == "stable" and uses_prior_category:
        facts.prior_category = _prior_category(rs, prior, facts, f.id, notes)
    else:
        facts.prior_category = prior.categories.get(rs.id)
    return facts


def _growth_status(rs: RuleSet, fid: str, facts: Facts, prior: PriorMeasurement, notes: list[str]) -> str:
    """"growing" or "stable" (stable includes smaller) by the rule set's growth definition."""
    g = rs.growth
    if g is None:
        return "stable"
    # Part-solid: the guideline's growth is of the solid component; a solid component in a nodule that
    # was ground-glass before is a new solid component, judged like a growing one.
    if facts.nodule_type == "part-solid" and normalize_type(prior.type) == "ground-glass":
        notes.append(f"{fid}: solid component is new (the prior was ground-glass): judged as growing")
        return "growing"
    if facts.nodule_type == "part-solid" and facts.solid_component_mm is not None and facts.prior_solid_component_mm is not None:
        increase = facts.solid_component_mm - facts.prior_solid_component_mm
        what = "solid component"
    elif facts.mean_diameter_mm is not None and facts.prior_mean_diameter_mm is not None:
        increase = facts.mean_diameter_mm - facts.prior_mean_diameter_mm
        what = "mean diameter"
    else:
        notes.append(f"{fid}: no prior size to judge growth: taken as stable")
        return "stable"
    # compare on the rounded scale so that 1.5 is exactly 1.5 and not 1.4999999
    increase = round_half_up(increase, rs.measurement.decimals)
    facts.growth_mm = increase
    if increase <= g.min_increase_mm:
        return "stable"
    if prior.interval_months is None:
        notes.append(f"{fid}: interval to the prior not given: growth assumed within {g.max_interval_months:g} months")
        return "growing"
    if prior.interval_months > g.max_interval_months:
        notes.append(
            f"{fid}: {what} increased {increase:g} mm over {prior.interval_months:g} months, longer than the "
            f"{g.max_interval_months:g}-month growth window: not growth by definition (flag slow_growth if it grew "
            "over several exams)"
        )
        return "stable"
    return "growing"


def evaluate(findings: list[Finding], context: RuleContext, rule_set: RuleSet | str) -> StudyEvaluation:
    """Categories for each judged finding and for the study under ``rule_set`` (a RuleSet or its id)."""
    if isinstance(rule_set, str):
        from .library import load_rule_set

        rule_set = load_rule_set(rule_set)
    rs = rule_set
    notes: list[str] = []
    judged = _judged(rs, findings)
    ref = RuleRef(**rs.ref())

    reason = _not_applicable_reason(rs, context, notes)
    if reason:
        na = _plain(rs, NOT_APPLICABLE, reason, "applicability")
        return StudyEvaluation(
            rule_set=ref, system=rs.system, applicable=False, reason=reason,
            categories={f.id: na.model_copy() for f in judged}, study=na, notes=notes,
        )

    # risk and multiplicity are the same kind of fact for every finding
    risk = context.risk
    if risk is None and rs.study.default_risk is not None:
        risk = rs.study.default_risk
        notes.append(f"patient risk not given: the {risk}-risk recommendation is shown")
    families = [_family(normalize_type(f.type)) for f in judged]

    categories: dict[str, Category] = {}
    facts_by_id: dict[str, Facts] = {}
    ranks: dict[str, int] = {}
    for f, fam in zip(judged, families):
        facts = _facts(rs, f, context, notes)
        facts.risk = risk
        same = families.count(fam) if rs.study.multiplicity_by_family else len(judged)
        facts.multiplicity = "multiple" if same > 1 else "single"
        facts_by_id[f.id] = facts
        row = _first_row(rs, facts)
        if row is None:
            categories[f.id] = _plain(rs, NOT_ASSESSABLE, _missing_reason(facts), "no-row")
            notes.append(f"{f.id} not assessable: {categories[f.id].recommendation}")
            continue
        value, rule_id = row.category, row.id
        for up in rs.upgrades:
            if value in up.from_categories and up.flag in facts.flags:
                value, rule_id = up.to, f"{row.id}+{up.flag}"
        categories[f.id] = _category(rs, value, rule_id)
        ranks[f.id] = rs.category(value).rank

    study, deciding = _study_category(rs, context, judged, categories, ranks, facts_by_id)
    return StudyEvaluation(
        rule_set=ref, system=rs.system, applicable=True, categories=categories, study=study,
        deciding_finding=deciding, facts=facts_by_id, notes=notes,
    )


def _study_category(
    rs: RuleSet,
    ctx: RuleContext,
    judged: list[Finding],
    categories: dict[str, Category],
    ranks: dict[str, int],
    facts: dict[str, Facts],
) -> tuple[Category, Optional[str]]:
    deciding: Optional[str] = None
    if ctx.incomplete_reason and rs.study.incomplete is not None:
        c = rs.category(rs.study.incomplete)
        study = _category(rs, c.value, "study-incomplete", f"{c.recommendation} ({ctx.incomplete_reason})")
    elif ranks:
        # the most suspicious finding decides; equal rank: the larger nodule
        deciding = max(ranks, key=lambda fid: (ranks[fid], facts[fid].mean_diameter_mm or 0.0))
        study = categories[deciding].model_copy()
    elif judged:
        study = _plain(rs, NOT_ASSESSABLE, "no nodule could be assessed: " + "; ".join(
            f"{fid}: {c.recommendation}" for fid, c in categories.items()), "no-row")
    elif rs.study.no_findings is not None:
        study = _category(rs, rs.study.no_findings, "study-no-findings")
    else:
        study = _plain(rs, NOT_APPLICABLE, f"no pulmonary nodule reported: {rs.system} recommendations do not apply", "study-no-findings")
    if ctx.significant_other_findings and rs.study.modifier_suffix and study.value not in (NOT_APPLICABLE, NOT_ASSESSABLE):
        study.value += rs.study.modifier_suffix
        study.recommendation = f"{study.recommendation} {rs.study.modifier_description}".strip()
    return study, deciding


def evaluate_all(
    findings: list[Finding], context: RuleContext, rule_sets: Iterable[RuleSet]
) -> list[StudyEvaluation]:
    return [evaluate(findings, context, rs) for rs in rule_sets]
