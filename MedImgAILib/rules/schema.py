"""The rule-set file format (``Resources/rules/*.yaml``), validated on load.

A rule set is data, not code: its categories (value, recommendation, follow-up interval, rank) and a
decision table whose rows say, in terms a radiologist reads, which nodules fall in which category.
Rows are tried top to bottom and the first row whose every condition holds decides; the files order
specific overrides (benign features, stepped management) first and otherwise list the more suspicious
rows before the less suspicious ones. A condition on a measurement the finding does not have never
holds, so a missing measurement gives "not assessable", never a guessed category.

Size ranges carry explicit bounds (``gte``/``gt`` below, ``lt``/``lte`` above) and are compared with
the size *after* the rule set's own rounding (``measurement``), exactly as the guideline prints them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ContentError
from ..fileio import parse_yaml
from ..results import Code

NoduleType = Literal["solid", "part-solid", "ground-glass"]
#: how a nodule relates to the prior exam (derived by the engine, see engine.py)
NoduleStatus = Literal["baseline", "new", "growing", "stable"]

NOT_APPLICABLE = "not applicable"
NOT_ASSESSABLE = "not assessable"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A size interval in mm with explicit inclusive/exclusive ends (at least one end)."""

    gte: Optional[float] = None
    gt: Optional[float] = None
    lt: Optional[float] = None
    lte: Optional[float] = None

    @model_validator(mode="after")
    def _bounds(self) -> "Range":
        if self.gte is not None and self.gt is not None:
            raise ValueError("give either gte or gt, not both")
        if self.lt is not None and self.lte is not None:
            raise ValueError("give either lt or lte, not both")
        lo = self.gte if self.gte is not None else self.gt
        hi = self.lt if self.lt is not None else self.lte
        if lo is None and hi is None:
            raise ValueError("a range needs at least one bound (gte/gt/lt/lte)")
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"lower bound {lo} is not below upper bound {hi}")
        return self

    def contains(self, x: float) -> bool:
        if self.gte is not None and not x >= self.gte:
            return False
        if self.gt is not None and not x > self.gt:
            return False
        if self.lt is not None and not x < self.lt:
            return False
        if self.lte is not None and not x <= self.lte:
            return False
        return True

    def text(self) -> str:
        parts = []
        if self.gte is not None:
            parts.append(f">={self.gte:g}")
        if self.gt is not None:
            parts.append(f">{self.gt:g}")
        if self.lt is not None:
            parts.append(f"<{self.lt:g}")
        if self.lte is not None:
            parts.append(f"<={self.lte:g}")
        return " and ".join(parts) + " mm"


class When(_Strict):
    """Conditions of one row; all given conditions must hold (omitted = any)."""

    nodule_type: Optional[list[NoduleType]] = None
    status: Optional[list[NoduleStatus]] = None
    #: the rule set's rounded mean diameter (part-solid: of the whole nodule)
    mean_diameter_mm: Optional[Range] = None
    #: rounded mean diameter of the solid component of a part-solid nodule
    solid_component_mm: Optional[Range] = None
    #: rounded sizes of the matched prior (size-threshold crossing without growth)
    prior_mean_diameter_mm: Optional[Range] = None
    prior_solid_component_mm: Optional[Range] = None
    #: category the matched prior received under this rule set (stepped management)
    prior_category: Optional[list[str]] = None
    #: nodule touches the pleura or a fissure (Finding.juxtapleural or Finding.perifissural)
    juxtapleural: Optional[bool] = None
    #: every listed flag must be set on the finding (RuleContext.finding_flags)
    flags: Optional[list[str]] = None
    #: Fleischner: one nodule or several (of the same family: solid vs subsolid)
    multiplicity: Optional[Literal["single", "multiple"]] = None
    risk: Optional[Literal["low", "high"]] = None


class Row(_Strict):
    id: str
    category: str  # value of one of the rule set's categories
    when: When
    #: where in the published document this row comes from
    source: str
    note: str = ""


class CategoryDef(_Strict):
    value: str  # as the guideline prints it ("3", "4A") or the table cell's label (Fleischner)
    descriptor: str = ""
    recommendation: str
    #: earliest recommended follow-up CT in months (None: no routine follow-up / not a surveillance interval)
    follow_up_months: Optional[float] = None
    #: latest, where the guideline gives a range ("CT at 6-12 months")
    follow_up_months_max: Optional[float] = None
    #: higher = more suspicious; the study category is the finding category with the highest rank
    rank: int
    codes: list[Code] = Field(default_factory=list)
    source: str = ""

    @model_validator(mode="after")
    def _interval(self) -> "CategoryDef":
        if self.follow_up_months_max is not None:
            if self.follow_up_months is None or self.follow_up_months_max < self.follow_up_months:
                raise ValueError("follow_up_months_max needs follow_up_months and must not be smaller")
        return self


class Measurement(_Strict):
    """How the guideline wants the size measured and rounded before it is compared with the table."""

    quantity: Literal["mean_diameter_mm"] = "mean_diameter_mm"
    decimals: int = Field(ge=0, le=3)
    rounding: Literal["half-up"] = "half-up"
    description: str


class Growth(_Strict):
    """Lung-RADS: growth = increase in (rounded) mean diameter > min_increase_mm within max_interval_months."""

    min_increase_mm: float = Field(gt=0)
    max_interval_months: float = Field(gt=0)
    description: str


class Applicability(_Strict):
    #: "required": screening exams only; "excluded": incidental only (screening=None counts as incidental,
    #: with a note); "any"
    screening: Literal["required", "excluded", "any"]
    min_age_years: Optional[float] = None
    #: RuleContext booleans that make the rule set not applicable when true
    excluded_if: list[Literal["known_cancer", "immunocompromised"]] = Field(default_factory=list)
    #: finding labels (case-insensitive) the rule set judges; other findings are left alone
    finding_labels: list[str] = Field(min_length=1)
    description: str


class Upgrade(_Strict):
    """A finding category raised when a flag is set (Lung-RADS 4X)."""

    from_categories: list[str] = Field(min_length=1)
    to: str
    flag: str
    source: str


class StudyRule(_Strict):
    aggregate: Literal["highest-rank"] = "highest-rank"
    description: str
    #: category when no finding is judged (Lung-RADS "1"); None: "not applicable" with a reason
    no_findings: Optional[str] = None
    #: category for an incomplete exam (RuleContext.incomplete_reason; Lung-RADS "0")
    incomplete: Optional[str] = None
    #: suffix added to the study value when RuleContext.significant_other_findings (Lung-RADS "S")
    modifier_suffix: Optional[str] = None
    modifier_description: str = ""
    #: count nodules of the same family (solid vs subsolid) for single/multiple tables
    multiplicity_by_family: bool = False
    #: risk used when the context does not give one (noted in the result)
    default_risk: Optional[Literal["low", "high"]] = None


class RuleSet(_Strict):
    schema_: Literal["medimgai.rules/1"] = Field(alias="schema")
    id: str
    version: str
    system: str  # "Lung-RADS" | "Fleischner": Category.system
    title: str
    source: str  # the citation of the primary document
    source_url: str = ""
    effective: date
    changelog: list[str] = Field(min_length=1)
    measurement: Measurement
    growth: Optional[Growth] = None
    applicability: Applicability
    study: StudyRule
    categories: list[CategoryDef] = Field(min_length=1)
    rows: list[Row] = Field(min_length=1)
    upgrades: list[Upgrade] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v or v != v.strip().lower() or " " in v:
            raise ValueError("id must be lower-case without spaces, e.g. 'lung-rads'")
        return v

    @model_validator(mode="after")
    def _references(self) -> "RuleSet":
        values = [c.value for c in self.categories]
        dup = {v for v in values if values.count(v) > 1}
        if dup:
            raise ValueError(f"category values defined twice: {sorted(dup)}")
        ids = [r.id for r in self.rows]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"row ids used twice: {sorted(dup)}")
        from .context import FINDING_FLAGS

        for i, row in enumerate(self.rows):
            unknown = sorted(set(row.when.flags or []) - set(FINDING_FLAGS))
            if unknown:
                raise ValueError(f"rows.{i} ({row.id}): unknown flag(s) {unknown}; known: {sorted(FINDING_FLAGS)}")
        for i, up in enumerate(self.upgrades):
            if up.flag not in FINDING_FLAGS:
                raise ValueError(f"upgrades.{i}: unknown flag {up.flag!r}; known: {sorted(FINDING_FLAGS)}")
        known = set(values)
        for i, row in enumerate(self.rows):
            if row.category not in known:
                raise ValueError(f"rows.{i} ({row.id}): category {row.category!r} is not one of {values}")
        for i, up in enumerate(self.upgrades):
            for v in [*up.from_categories, up.to]:
                if v not in known:
                    raise ValueError(f"upgrades.{i}: category {v!r} is not one of {values}")
        for name in ("no_findings", "incomplete"):
            v = getattr(self.study, name)
            if v is not None and v not in known:
                raise ValueError(f"study.{name}: category {v!r} is not one of {values}")
        return self

    def category(self, value: str) -> CategoryDef:
        for c in self.categories:
            if c.value == value:
                return c
        raise KeyError(value)

    def ref(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_rule_set_file(path: str | Path) -> RuleSet:
    """Read and validate one rule-set YAML; any problem is a ``ContentError`` naming file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContentError(f"rule set {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ContentError(f"rule set {path}: not valid YAML{where}") from exc
    if not isinstance(data, dict):
        raise ContentError(f"rule set {path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ContentError(f"rule set {path}: field {_loc(first['loc'])}: {first['msg']}{more}") from exc
