"""What the rules need to know besides the findings: the patient and the exam (``RuleContext``).

The context comes from the user (``--context age=67,risk=high,screening=true``) or is inferred from the
series metadata (``infer_context``); an explicitly given value always wins over an inferred one. Unknown
stays ``None``: the engine then says what it assumed, or that the rule set does not apply.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import RuleError


#: features a reader sets per finding (the model cannot judge them); the rule sets' rows may only use these
FINDING_FLAGS: dict[str, str] = {
    "benign_calcification": "complete, central, popcorn or concentric-ring calcification, or fat (Lung-RADS 1)",
    "smooth_benign_shape": "smooth margins and oval / lentiform / triangular shape (Lung-RADS juxtapleural rule)",
    "additional_suspicious_features": "features that increase suspicion of lung cancer (Lung-RADS 3/4 -> 4X)",
    "slow_growth": "growth over several screening exams (Lung-RADS 4B)",
    "proven_benign": "category 4B lesion proven benign after workup (Lung-RADS 2)",
}


class PriorMeasurement(BaseModel):
    """The matched nodule on the prior exam (filled by prior matching / the tracking store).

    Also read from ``Finding.prior``; ``prior_mean_diameter_mm`` / ``prior_solid_core_mean_diameter_mm``
    and ``interval_days`` are accepted there too."""

    model_config = ConfigDict(extra="ignore")

    mean_diameter_mm: Optional[float] = Field(
        default=None, validation_alias=AliasChoices("mean_diameter_mm", "prior_mean_diameter_mm")
    )
    solid_core_mean_diameter_mm: Optional[float] = Field(
        default=None,
        validation_alias=AliasChoices("solid_core_mean_diameter_mm", "prior_solid_core_mean_diameter_mm"),
    )
    volume_mm3: Optional[float] = None
    type: str = ""  # nodule type on the prior exam ("ground-glass" -> a solid component is new)
    #: months between the prior exam and this one
    interval_months: Optional[float] = None
    #: the category the prior received under the rule set being applied (stepped management)
    categories: dict[str, str] = Field(default_factory=dict)  # rule-set id -> value, e.g. {"lung-rads": "4A"}

    @model_validator(mode="before")
    @classmethod
    def _days_to_months(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("interval_months") is None and data.get("interval_days") is not None:
            data = {**data, "interval_months": float(data["interval_days"]) / (365.25 / 12)}
        return data


class RuleContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    age_years: Optional[float] = None
    risk: Optional[Literal["low", "high"]] = None
    #: True: lung cancer screening exam; False: incidental (any other CT); None: not known
    screening: Optional[bool] = None
    #: "baseline": first screening exam (no prior); "follow-up": a prior exam exists. None: inferred
    #: ("follow-up" when any prior is given, else "baseline")
    exam: Optional[Literal["baseline", "follow-up"]] = None
    #: finding id -> matched prior measurement; a finding without an entry on a follow-up exam is new
    priors: dict[str, PriorMeasurement] = Field(default_factory=dict)
    known_cancer: Optional[bool] = None
    immunocompromised: Optional[bool] = None
    #: Lung-RADS 0: why the exam cannot be categorized yet (prior being located, lungs not evaluable, ...)
    incomplete_reason: Optional[str] = None
    #: Lung-RADS S modifier: clinically significant findings unrelated to lung cancer
    significant_other_findings: bool = False
    #: finding id -> features the model cannot judge, set by a radiologist: "benign_calcification",
    #: "smooth_benign_shape" (smooth margins, oval/lentiform/triangular), "additional_suspicious_features"
    #: (-> 4X), "slow_growth", "proven_benign"
    finding_flags: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("finding_flags")
    @classmethod
    def _known_flags(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for fid, flags in v.items():
            unknown = sorted(set(flags) - set(FINDING_FLAGS))
            if unknown:
                raise ValueError(f"finding {fid}: unknown flag(s) {unknown}; known: {sorted(FINDING_FLAGS)}")
        return v

    def effective_exam(self) -> str:
        return self.exam or ("follow-up" if self.priors else "baseline")

    def public_dict(self) -> dict[str, Any]:
        """For findings.json: what the categories were based on (no identifiers in here)."""
        return self.model_dump(mode="json", exclude_defaults=True)


# --------------------------------------------------------------------------------------------------
# --context key=value,... (CLI and pipeline)
# --------------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}
_KEYS = {
    "age": "age_years",
    "age_years": "age_years",
    "risk": "risk",
    "screening": "screening",
    "exam": "exam",
    "known_cancer": "known_cancer",
    "cancer": "known_cancer",
    "immunocompromised": "immunocompromised",
    "incomplete": "incomplete_reason",
    "incomplete_reason": "incomplete_reason",
    "s": "significant_other_findings",
    "significant_other_findings": "significant_other_findings",
}
_BOOLS = {"screening", "known_cancer", "immunocompromised", "significant_other_findings"}


def parse_context_arg(text: str | None) -> dict[str, Any]:
    """``"age=67,risk=high,screening=true"`` -> the given RuleContext fields (only those given)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower().replace("-", "_"), value.strip()
        if not sep or key not in _KEYS:
            raise RuleError(
                f"--context item {part!r} is not KEY=VALUE with KEY one of: {', '.join(sorted(set(_KEYS)))}"
            )
        field = _KEYS[key]
        if field in _BOOLS:
            low = value.lower()
            if low not in _TRUE | _FALSE:
                raise RuleError(f"--context {key}={value!r}: expected true or false")
            out[field] = low in _TRUE
        elif field == "age_years":
            try:
                out[field] = float(value)
            except ValueError:
                raise RuleError(f"--context age={value!r}: expected a number of years") from None
        elif field == "risk":
            if value.lower() not in ("low", "high"):
                raise RuleError(f"--context risk={value!r}: expected low or high")
            out[field] = value.lower()
        elif field == "exam":
            low = value.lower().replace("_", "-")
            low = {"followup": "follow-up"}.get(low, low)
            if low not in ("baseline", "follow-up"):
                raise RuleError(f"--context exam={value!r}: expected baseline or follow-up")
            out[field] = low
        else:
            out[field] = value
    return out


def make_context(**fields: Any) -> RuleContext:
    try:
        return RuleContext(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RuleError(f"rule context field {loc}: {first['msg']}") from None


# --------------------------------------------------------------------------------------------------
# Inference from the study's metadata
# --------------------------------------------------------------------------------------------------

#: words in the indication / procedure / study description that mark a lung cancer screening exam
_SCREENING = re.compile(r"\b(screening|screen|lcs|ldct|low[- ]dose ct|lung[- ]rads)\b", re.IGNORECASE)
#: ... and those that mark a known malignancy (Fleischner does not apply)
_CANCER = re.compile(r"\b(staging|restaging|metasta\w*|known (primary|malignancy|cancer)|oncolog\w*)\b", re.IGNORECASE)


def infer_context(metadata: Any = None, explicit: RuleContext | dict[str, Any] | None = None) -> RuleContext:
    """A RuleContext from ``SeriesMetadata`` (age; screening from the indication, procedure code or study
    description), overridden field by field by what was given explicitly."""
    inferred: dict[str, Any] = {}
    if metadata is not None:
        age = metadata.patient.age_years
        if not age.missing and age.value is not None:
            inferred["age_years"] = float(age.value)
        texts = [
            t.value
            for t in (metadata.study.indication, metadata.study.procedure_code, metadata.study.study_description)
            if not t.missing and t.value
        ]
        blob = " ".join(str(t) for t in texts)
        if blob:
            if _SCREENING.search(blob):
                inferred["screening"] = True
            if _CANCER.search(blob):
                inferred["known_cancer"] = True
    if isinstance(explicit, RuleContext):
        given = explicit.model_dump(exclude_unset=True)
    else:
        given = dict(explicit or {})
    return make_context(**{**inferred, **{k: v for k, v in given.items() if v is not None}})
