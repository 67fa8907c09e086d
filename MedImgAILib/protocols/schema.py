"""The protocol file format (``Resources/protocols/*.yaml``), validated with pydantic on load.

A protocol says which series it applies to (``match``), which acquisition parameters and image-quality
measures they must (``level: required`` -> fail) or should (``level: recommended`` -> warn) have, and
which header fields must be present. Every criterion names the value it reads by a dotted field name:

- ``acquisition.*``, ``series.*``, ``study.*``, ... : a ``SeriesMetadata`` field (the header),
- ``derived.*`` : computed from the header and the slice geometry (reconstruction interval, voxel size),
- ``iq.*`` : an image-quality measure computed from the pixels (noise, CT numbers, coverage, SNR).

A value that is absent (tag not in the header, no pixels for an ``iq.*`` measure) is never a pass.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Level = Literal["required", "recommended"]

#: the derived values the conformance engine computes (documented in docs/protocols.md)
DERIVED_FIELDS = {
    "derived.reconstruction_interval_mm": "median distance between adjacent slice centres",
    "derived.interval_to_thickness_ratio": "reconstruction interval / slice thickness (<= 1: contiguous or overlapping)",
    "derived.max_voxel_size_mm": "largest of pixel spacing (row, column) and reconstruction interval",
    "derived.min_voxel_size_mm": "smallest of pixel spacing (row, column) and reconstruction interval",
    "derived.voxel_anisotropy": "largest / smallest voxel dimension",
    "derived.in_plane_pixel_mm": "largest in-plane pixel spacing",
    "derived.fov_mm": "reconstruction diameter, else columns x pixel spacing",
    "derived.scan_length_mm": "distance between the first and last slice centres plus one interval",
    "derived.slice_count": "number of slices",
}

#: the image-quality measures ``quality.measure_image_quality`` reports (``iq.<name>``)
IQ_FIELDS = {
    "iq.noise_sd_hu": "noise: HU SD in homogeneous soft tissue (air when no soft tissue is found)",
    "iq.noise_soft_tissue_sd_hu": "noise: HU SD in homogeneous soft tissue",
    "iq.noise_air_sd_hu": "noise: HU SD in the air outside the body",
    "iq.air_hu": "CT number of the air outside the body",
    "iq.soft_tissue_hu": "CT number of the homogeneous soft tissue found",
    "iq.air_hu_error": "air CT number minus -1000 HU",
    "iq.lungs_fully_covered": "true when the first and last slices contain no lung",
    "iq.lung_area_first_slice_mm2": "lung area on the first slice",
    "iq.lung_area_last_slice_mm2": "lung area on the last slice",
    "iq.slice_spacing_max_deviation_mm": "largest |interval - median interval|",
    "iq.slice_spacing_regular": "true when every interval is within 1% (or 0.05 mm) of the median",
    "iq.noise_slice_max_ratio": "streak indicator: noisiest slice's soft-tissue SD / median slice SD",
    "iq.metal_volume_mm3": "streak indicator: volume above 2500 HU",
    "iq.interslice_discontinuity_max_ratio": "motion indicator: largest adjacent-slice difference / median",
    "iq.snr": "MR: mean signal in the head mask / background noise sigma (Rayleigh corrected)",
    "iq.background_noise_sigma": "MR: noise sigma estimated from the background (Rayleigh corrected)",
}


class Source(BaseModel):
    """Where the numbers come from: the guideline, its issuing body, and the date of the version used."""

    model_config = ConfigDict(extra="forbid")
    citation: str = Field(min_length=10)
    url: Optional[str] = None
    notes: str = ""


class ChangelogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    date: dt.date
    author: str
    change: str


class MatchRule(BaseModel):
    """How a series is matched to this protocol.

    ``modality`` must match. Then at least one of: a procedure code (strongest), a description pattern
    (protocol name, series description, study description), or the body part. ``exclude_patterns`` veto
    a match (a routine chest protocol excludes "low dose|screening"). ``priority`` breaks ties.
    """

    model_config = ConfigDict(extra="forbid")
    modality: list[str] = Field(min_length=1)
    body_part: list[str] = Field(default_factory=list)
    description_patterns: list[str] = Field(default_factory=list)
    exclude_patterns: list[str] = Field(default_factory=list)
    procedure_codes: list[str] = Field(default_factory=list)
    #: False: the body part supports a match but is not enough alone (a chest CT is not a screening CT
    #: unless its description or procedure code says so)
    body_part_alone: bool = True
    priority: int = 0

    @field_validator("description_patterns", "exclude_patterns")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {exc}") from exc
        return patterns

    @field_validator("modality", "body_part")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]


class Criterion(BaseModel):
    """One check. Exactly one of: a numeric range (``min``/``max``, optional ``preferred_min``/
    ``preferred_max`` that warn when missed), ``allowed`` values, ``pattern`` (regex on text), or
    ``equals`` (a boolean or number measured exactly)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    field: str = Field(pattern=r"^[a-z_]+\.[a-z0-9_]+$")
    level: Level = "required"
    description: str = ""
    unit: str = ""
    min: Optional[float] = None
    max: Optional[float] = None
    preferred_min: Optional[float] = None
    preferred_max: Optional[float] = None
    #: for numbers: the value must be within ``tolerance`` of one of these; for text: one of these
    allowed: Optional[list[float | str]] = None
    tolerance: float = 0.0
    pattern: Optional[str] = None
    equals: Optional[bool | float] = None
    #: pass when the field is absent, for tags whose absence means "none" (ContrastBolusAgent);
    #: ``absent_means`` says so in the report, so the pass is never silent
    absent_passes: bool = False
    absent_means: str = ""

    @model_validator(mode="after")
    def _one_kind(self) -> "Criterion":
        kinds = [
            self.min is not None or self.max is not None,
            self.allowed is not None,
            self.pattern is not None,
            self.equals is not None,
        ]
        if sum(kinds) != 1:
            raise ValueError(
                f"criterion {self.name!r} needs exactly one of min/max, allowed, pattern, equals"
            )
        if (self.preferred_min is not None or self.preferred_max is not None) and not kinds[0]:
            raise ValueError(f"criterion {self.name!r}: preferred_min/preferred_max need min/max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"criterion {self.name!r}: min {self.min} > max {self.max}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"criterion {self.name!r}: pattern is not a valid regex: {exc}") from exc
        if self.absent_passes and not self.absent_means:
            raise ValueError(f"criterion {self.name!r}: absent_passes needs absent_means (what absence says)")
        if self.field.startswith("derived.") and self.field not in DERIVED_FIELDS:
            raise ValueError(f"criterion {self.name!r}: unknown derived field {self.field!r}")
        if self.field.startswith("iq.") and self.field not in IQ_FIELDS:
            raise ValueError(f"criterion {self.name!r}: unknown image-quality field {self.field!r}")
        return self

    @property
    def section(self) -> str:
        return self.field.split(".", 1)[0]

    def expected_text(self) -> str:
        """The criterion in words, as the report shows it ("<= 2.5 mm (preferred <= 1.0)")."""
        u = f" {self.unit}" if self.unit else ""
        if self.min is not None or self.max is not None:
            if self.min is not None and self.max is not None:
                s = f"{_num(self.min)} to {_num(self.max)}{u}"
            elif self.max is not None:
                s = f"<= {_num(self.max)}{u}"
            else:
                s = f">= {_num(self.min)}{u}"
            pref = []
            if self.preferred_min is not None:
                pref.append(f">= {_num(self.preferred_min)}")
            if self.preferred_max is not None:
                pref.append(f"<= {_num(self.preferred_max)}")
            if pref:
                s += f" (preferred {' and '.join(pref)}{u})"
            return s
        if self.allowed is not None:
            vals = ", ".join(_num(v) if isinstance(v, (int, float)) else str(v) for v in self.allowed)
            tol = f" (+/- {_num(self.tolerance)})" if self.tolerance else ""
            return f"one of {vals}{u}{tol}"
        if self.pattern is not None:
            return f"matches /{self.pattern}/"
        return f"= {str(self.equals).lower() if isinstance(self.equals, bool) else _num(self.equals)}{u}"


def _num(v: float | int | str) -> str:
    if isinstance(v, str):
        return v
    return f"{v:g}"


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(pattern=r"^\d+\.\d+(\.\d+)?$")
    title: str
    modality: str
    body_region: str
    source: list[Source] = Field(min_length=1)
    effective: dt.date
    owner: str
    changelog: list[ChangelogEntry] = Field(min_length=1)
    match: MatchRule
    criteria: list[Criterion] = Field(min_length=1)
    #: header fields this protocol's consumers need even though no range applies to them
    metadata_required: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "Protocol":
        names = [c.name for c in self.criteria]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"criteria names repeat: {', '.join(dup)}")
        if self.changelog[-1].version != self.version:
            raise ValueError(
                f"the last changelog entry is version {self.changelog[-1].version}, the protocol says {self.version}"
            )
        for f in self.metadata_required:
            if not re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", f):
                raise ValueError(f"metadata_required entry {f!r} is not a dotted field name")
        return self

    def summary(self) -> dict:
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "modality": self.modality,
            "body_region": self.body_region,
            "effective": self.effective.isoformat(),
            "owner": self.owner,
        }
