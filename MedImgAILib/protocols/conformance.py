"""Conformance of one series to one protocol, metadata completeness, and the warn-or-refuse policy.

``check_series(metadata, volume, protocol_id=None)`` is the entry point the pipeline calls before
inference. Each criterion gets one status:

- ``pass``: the value is present and within the range (and within the preferred range, if any),
- ``warn``: a recommended criterion is out of range, or a required one is outside its preferred range,
- ``fail``: a required criterion is out of range,
- ``missing``: the value is not in the header (or cannot be derived): never counted as a pass,
- ``not_evaluated``: an image-quality criterion when no pixels were given (header-only check).

A series is ``conformant`` when no required criterion is ``fail`` or ``missing``.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..dicom.metadata import SeriesMetadata
from ..errors import ProtocolError
from ..volume import Volume
from .library import MatchResult, ProtocolLibrary, default_library
from .quality import measure_image_quality, slice_positions_from_volume
from .schema import Criterion, Protocol

Status = Literal["pass", "warn", "fail", "missing", "not_evaluated"]


class NonconformantSeriesError(ProtocolError):
    """The policy refuses to analyze a series that does not meet its protocol."""

    kind = "nonconformant"


class Check(BaseModel):
    name: str
    field: str
    level: str
    expected: str
    actual: Any = None
    status: Status
    #: where the value came from: a DICOM tag, "derived: ...", or "image"
    source: str = ""
    message: str = ""


class MetadataCompleteness(BaseModel):
    required: list[str] = Field(default_factory=list)
    present: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    fraction_present: float = 1.0
    #: which consumer asked for each field: {"protocol": [...], "model": [...]}
    required_by: dict[str, list[str]] = Field(default_factory=dict)
    #: missing fields per consumer
    missing_by: dict[str, list[str]] = Field(default_factory=dict)


class ProtocolRef(BaseModel):
    id: str
    version: str
    title: str = ""


class ConformanceReport(BaseModel):
    schema_: str = Field(default="medimgai.conformance/1", alias="schema")
    series_instance_uid: str = ""
    protocol: Optional[ProtocolRef] = None
    #: "given" | "procedure_code" | "description" | "body_part" | "none"
    matched_by: str = "none"
    match_evidence: list[str] = Field(default_factory=list)
    conformant: bool = False
    checks: list[Check] = Field(default_factory=list)
    image_quality: dict[str, Any] = Field(default_factory=dict)
    metadata_completeness: MetadataCompleteness = Field(default_factory=MetadataCompleteness)
    derived: dict[str, Any] = Field(default_factory=dict)
    messages: list[str] = Field(default_factory=list)

    model_config = {"populate_by_name": True}

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("pass", "warn", "fail", "missing", "not_evaluated")}
        for c in self.checks:
            out[c.status] += 1
        return out

    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status in ("warn", "fail", "missing")]

    def to_json(self) -> dict[str, Any]:
        """The ``medimgai qc --json`` record."""
        d = self.model_dump(mode="json", by_alias=True)
        if self.protocol is not None:
            d["protocol"] = {"id": self.protocol.id, "version": self.protocol.version, "title": self.protocol.title}
        return d

    def findings_block(self) -> dict[str, Any]:
        """What findings.json records under ``"protocol"`` (AnalysisResult.protocol)."""
        return {
            "id": self.protocol.id if self.protocol else None,
            "version": self.protocol.version if self.protocol else None,
            "matched_by": self.matched_by,
            "conformant": self.conformant,
            "checks": [
                {"name": c.name, "expected": c.expected, "actual": c.actual, "status": c.status, "level": c.level}
                for c in self.checks
            ],
            "metadata_missing": self.metadata_completeness.missing,
        }

    def summary_line(self) -> str:
        if self.protocol is None:
            return "no protocol matched"
        c = self.counts()
        bad = ", ".join(f"{x.name}={x.status}" for x in self.problems())
        verdict = "conformant" if self.conformant else "NOT conformant"
        return (
            f"{self.protocol.id} v{self.protocol.version}: {verdict} "
            f"({c['pass']} pass, {c['warn']} warn, {c['fail']} fail, {c['missing']} missing)"
            + (f": {bad}" if bad else "")
        )


# --------------------------------------------------------------------------------------------------
# derived values
# --------------------------------------------------------------------------------------------------
def derive_values(md: SeriesMetadata, slice_positions_mm: Sequence[float] | None) -> dict[str, Any]:
    """``derived.*`` values from the header and the slice centres (None where not derivable)."""
    out: dict[str, Any] = {k: None for k in (
        "reconstruction_interval_mm", "interval_to_thickness_ratio", "max_voxel_size_mm",
        "min_voxel_size_mm", "voxel_anisotropy", "in_plane_pixel_mm", "fov_mm", "scan_length_mm",
        "slice_count")}
    acq = md.acquisition
    interval = None
    if slice_positions_mm is not None and len(slice_positions_mm) >= 2:
        p = np.sort(np.asarray(slice_positions_mm, dtype=float))
        interval = float(np.median(np.diff(p)))
        out["slice_count"] = int(p.size)
        out["scan_length_mm"] = round(float(p[-1] - p[0]) + interval, 3)
    elif slice_positions_mm is not None and len(slice_positions_mm) == 1:
        out["slice_count"] = 1
    if interval is None and not acq.spacing_between_slices_mm.missing:
        interval = float(acq.spacing_between_slices_mm.value)
    if interval is None and not md.series.number_of_instances.missing and md.series.number_of_instances.value == 1:
        out["slice_count"] = 1
    if interval is not None:
        out["reconstruction_interval_mm"] = round(interval, 3)
        if not acq.slice_thickness_mm.missing and acq.slice_thickness_mm.value:
            out["interval_to_thickness_ratio"] = round(interval / float(acq.slice_thickness_mm.value), 3)
    ps = acq.pixel_spacing_mm.value if not acq.pixel_spacing_mm.missing else None
    if ps:
        out["in_plane_pixel_mm"] = round(max(ps), 4)
        dims = list(ps) + ([interval] if interval is not None else
                           [float(acq.slice_thickness_mm.value)] if not acq.slice_thickness_mm.missing else [])
        if len(dims) == 3:
            out["max_voxel_size_mm"] = round(max(dims), 4)
            out["min_voxel_size_mm"] = round(min(dims), 4)
            out["voxel_anisotropy"] = round(max(dims) / min(dims), 3) if min(dims) > 0 else None
    if not acq.reconstruction_diameter_mm.missing:
        out["fov_mm"] = float(acq.reconstruction_diameter_mm.value)
    elif ps and not acq.columns.missing:
        out["fov_mm"] = round(float(acq.columns.value) * float(ps[1]), 2)
    return out


_DERIVED_NEEDS = {
    "reconstruction_interval_mm": "two or more slice positions or (0018,0088) SpacingBetweenSlices",
    "interval_to_thickness_ratio": "slice positions (or SpacingBetweenSlices) and (0018,0050) SliceThickness",
    "max_voxel_size_mm": "(0028,0030) PixelSpacing and the slice interval",
    "min_voxel_size_mm": "(0028,0030) PixelSpacing and the slice interval",
    "voxel_anisotropy": "(0028,0030) PixelSpacing and the slice interval",
    "in_plane_pixel_mm": "(0028,0030) PixelSpacing",
    "fov_mm": "(0018,1100) ReconstructionDiameter or PixelSpacing and Columns",
    "scan_length_mm": "two or more slice positions",
    "slice_count": "the slice positions",
}


def _derived_source(name: str, md: SeriesMetadata, have_positions: bool) -> str:
    if name in ("reconstruction_interval_mm", "interval_to_thickness_ratio", "scan_length_mm", "slice_count"):
        return "derived: slice positions" if have_positions else "derived: (0018,0088) SpacingBetweenSlices"
    return "derived: header"


# --------------------------------------------------------------------------------------------------
# evaluation of one criterion
# --------------------------------------------------------------------------------------------------
def _status_for_range(c: Criterion, v: float) -> tuple[Status, str]:
    bad = "fail" if c.level == "required" else "warn"
    if c.min is not None and v < c.min:
        return bad, f"below {c.min:g}"
    if c.max is not None and v > c.max:
        return bad, f"above {c.max:g}"
    if c.preferred_min is not None and v < c.preferred_min:
        return "warn", f"below the preferred {c.preferred_min:g}"
    if c.preferred_max is not None and v > c.preferred_max:
        return "warn", f"above the preferred {c.preferred_max:g}"
    return "pass", ""


def evaluate_criterion(c: Criterion, value: Any) -> tuple[Status, str]:
    """Status of one criterion for a present value."""
    bad: Status = "fail" if c.level == "required" else "warn"
    if c.min is not None or c.max is not None:
        vals = value if isinstance(value, (list, tuple)) else [value]
        try:
            nums = [float(x) for x in vals]
        except (TypeError, ValueError):
            return bad, f"value {value!r} is not a number"
        # a list (pixel spacing) is judged by its worst element
        worst: tuple[Status, str] = ("pass", "")
        order = {"pass": 0, "warn": 1, "fail": 2}
        for x in nums:
            s = _status_for_range(c, x)
            if order[s[0]] > order[worst[0]]:
                worst = s
        return worst
    if c.allowed is not None:
        if all(isinstance(a, (int, float)) for a in c.allowed):
            try:
                x = float(value[0] if isinstance(value, (list, tuple)) else value)
            except (TypeError, ValueError):
                return bad, f"value {value!r} is not a number"
            ok = any(abs(x - float(a)) <= c.tolerance + 1e-9 for a in c.allowed)
        else:
            ok = str(value).strip().upper() in {str(a).strip().upper() for a in c.allowed}
        return ("pass", "") if ok else (bad, "not an allowed value")
    if c.pattern is not None:
        return ("pass", "") if re.search(c.pattern, str(value)) else (bad, "does not match")
    if isinstance(c.equals, bool):
        return ("pass", "") if bool(value) is c.equals else (bad, f"is not {str(c.equals).lower()}")
    try:
        return ("pass", "") if abs(float(value) - float(c.equals)) <= c.tolerance + 1e-9 else (bad, "differs")
    except (TypeError, ValueError):
        return bad, f"value {value!r} is not a number"


def _lookup(c: Criterion, md: SeriesMetadata, derived: dict[str, Any], iq: dict[str, Any] | None,
            have_positions: bool) -> tuple[Any, str, bool]:
    """(value, source, evaluable): evaluable False means "no pixels" for an iq criterion."""
    section, name = c.field.split(".", 1)
    if section == "derived":
        return derived.get(name), _derived_source(name, md, have_positions), True
    if section == "iq":
        if iq is None:
            return None, "image (no pixels given)", False
        return iq.get(name), "image", True
    t = md.get(c.field)
    return (None if t.missing else t.value), t.source, True


def evaluate(protocol: Protocol, md: SeriesMetadata, derived: dict[str, Any], iq: dict[str, Any] | None,
             have_positions: bool) -> list[Check]:
    checks = []
    for c in protocol.criteria:
        value, source, evaluable = _lookup(c, md, derived, iq, have_positions)
        common = dict(name=c.name, field=c.field, level=c.level, expected=c.expected_text(), source=source)
        if not evaluable:
            checks.append(Check(**common, actual=None, status="not_evaluated", message="no pixel data given"))
            continue
        if value is None:
            if c.absent_passes:
                checks.append(Check(**common, actual=None, status="pass", message=f"absent: {c.absent_means}"))
            else:
                why = "not in the header" if c.section not in ("derived", "iq") else "could not be measured"
                if c.section == "derived":
                    why = f"could not be derived: needs {_DERIVED_NEEDS.get(c.field.split('.', 1)[1], 'header values')}"
                if c.section == "iq" and iq and iq.get("notes"):
                    why += f" ({'; '.join(iq['notes'])})"
                checks.append(Check(**common, actual=None, status="missing", message=why))
            continue
        status, msg = evaluate_criterion(c, value)
        actual = value
        if isinstance(actual, float):
            actual = round(actual, 4)
        unit = f" {c.unit}" if c.unit else ""
        if msg:
            msg = f"{actual}{unit}: {msg} (expected {c.expected_text()})"
        checks.append(Check(**common, actual=actual, status=status, message=msg))
    return checks


# --------------------------------------------------------------------------------------------------
# metadata completeness
# --------------------------------------------------------------------------------------------------
def metadata_completeness(md: SeriesMetadata, protocol: Protocol | None,
                          model_required_fields: Sequence[str] = ()) -> MetadataCompleteness:
    """Which header fields the protocol (its header criteria and ``metadata_required``) and the model
    card need, and which of them the series lacks. Derived/iq values are not header fields."""
    need_proto: list[str] = []
    if protocol is not None:
        need_proto = [c.field for c in protocol.criteria if c.section not in ("derived", "iq") and not c.absent_passes]
        need_proto += list(protocol.metadata_required)
    need_proto = list(dict.fromkeys(need_proto))
    need_model = list(dict.fromkeys(model_required_fields))
    required = list(dict.fromkeys(need_proto + need_model))
    present, missing = [], []
    for f in required:
        try:
            t = md.get(f)
        except (AttributeError, ValueError):
            raise ProtocolError(f"required metadata field {f!r} is not a SeriesMetadata field (section.name)") from None
        (missing if t.missing else present).append(f)
    return MetadataCompleteness(
        required=required,
        present=present,
        missing=missing,
        fraction_present=round(len(present) / len(required), 4) if required else 1.0,
        required_by={"protocol": need_proto, "model": need_model},
        missing_by={"protocol": [f for f in need_proto if f in missing], "model": [f for f in need_model if f in missing]},
    )


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------
def select_protocol(md: SeriesMetadata, protocol_id: str | None, library: ProtocolLibrary,
                    candidates: Sequence[str] | None = None) -> MatchResult | None:
    if protocol_id:
        return MatchResult(protocol=library.get(protocol_id), matched_by="given", evidence=[f"given: {protocol_id}"])
    return library.match(md, candidates=candidates)


def check_series(
    metadata: SeriesMetadata,
    volume: Volume | None,
    protocol_id: str | None = None,
    *,
    library: ProtocolLibrary | None = None,
    candidates: Sequence[str] | None = None,
    model_required_fields: Sequence[str] = (),
    slice_positions_mm: Sequence[float] | None = None,
    image_quality: dict[str, Any] | None = None,
) -> ConformanceReport:
    """Check one series against ``protocol_id`` (or the best-matching protocol among ``candidates``,
    e.g. the model card's list, or the whole library).

    ``volume`` None gives a header-only check (image-quality criteria ``not_evaluated``).
    ``slice_positions_mm``: slice centres along the normal, when the caller read them from the headers;
    by default they come from the volume (its loader's record, else its affine).
    ``image_quality``: measures computed earlier (to avoid measuring twice).
    """
    lib = library or default_library()
    match = select_protocol(metadata, protocol_id, lib, candidates)
    uid = metadata.series.series_instance_uid.value or (volume.series_instance_uid if volume else "") or ""
    positions = slice_positions_mm
    if positions is None and volume is not None:
        positions = slice_positions_from_volume(volume)
    modality = metadata.series.modality.value or (volume.modality if volume is not None else None)
    iq = image_quality
    if iq is None and volume is not None:
        iq = measure_image_quality(volume, modality=modality, slice_positions_mm=positions)
    derived = derive_values(metadata, positions)
    if match is None:
        desc = metadata.series.series_description.value or metadata.series.protocol_name.value or "(none)"
        body = metadata.series.body_part_examined.value or "(none)"
        pool = ", ".join(candidates) if candidates else "the library"
        return ConformanceReport(
            series_instance_uid=uid,
            conformant=False,
            image_quality=iq or {},
            metadata_completeness=metadata_completeness(metadata, None, model_required_fields),
            derived=derived,
            messages=[
                f"no protocol in {pool} matches series {uid or '(no UID)'} (modality {modality or '(none)'}, "
                f"body part {body}, description {desc!r}); name one with --protocol"
            ],
        )
    proto = match.protocol
    checks = evaluate(proto, metadata, derived, iq, have_positions=positions is not None)
    conformant = not any(c.level == "required" and c.status in ("fail", "missing") for c in checks)
    messages = []
    if modality and proto.modality.upper() != str(modality).upper():
        messages.append(f"protocol {proto.id} is for {proto.modality}, the series is {modality}")
        conformant = False
    return ConformanceReport(
        series_instance_uid=uid,
        protocol=ProtocolRef(id=proto.id, version=proto.version, title=proto.title),
        matched_by=match.matched_by,
        match_evidence=match.evidence,
        conformant=conformant,
        checks=checks,
        image_quality=iq or {},
        metadata_completeness=metadata_completeness(metadata, proto, model_required_fields),
        derived=derived,
        messages=messages,
    )


# --------------------------------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------------------------------
class PolicyDecision(BaseModel):
    #: "analyze" | "analyze_with_warning" | "refuse"
    action: Literal["analyze", "analyze_with_warning", "refuse"]
    reasons: list[str] = Field(default_factory=list)

    @property
    def proceed(self) -> bool:
        return self.action != "refuse"


class ConformancePolicy(BaseModel):
    """What the pipeline does with a nonconforming series (site configuration).

    ``on_nonconformant``: "warn" analyzes and records the warnings; "refuse" does not analyze.
    ``on_no_protocol``: the same choice when no protocol matches the series.
    ``missing_required``: "fail" treats a required value absent from the header like a failed one;
    "warn" lets such a series through with a warning even under "refuse" (sites whose scanners
    omit CTDIvol from image headers).
    ``refuse_on_metadata_missing``: refuse when a field the *model* needs is missing.
    """

    on_nonconformant: Literal["warn", "refuse"] = "warn"
    on_no_protocol: Literal["warn", "refuse"] = "warn"
    missing_required: Literal["fail", "warn"] = "fail"
    refuse_on_metadata_missing: bool = False

    def decide(self, report: ConformanceReport) -> PolicyDecision:
        reasons: list[str] = []
        refuse = False
        if report.protocol is None:
            reasons.extend(report.messages or ["no protocol matched"])
            refuse = self.on_no_protocol == "refuse"
        else:
            hard = [c for c in report.checks if c.level == "required" and c.status == "fail"]
            soft_missing = [c for c in report.checks if c.level == "required" and c.status == "missing"]
            warns = [c for c in report.checks if c.status == "warn" or (c.level == "recommended" and c.status == "missing")]
            for c in hard:
                reasons.append(f"{c.name}: {c.message or c.status}")
            for c in soft_missing:
                reasons.append(f"{c.name}: missing ({c.message})")
            for c in warns:
                reasons.append(f"{c.name}: {c.status}{' - ' + c.message if c.message else ''}")
            reasons.extend(report.messages)
            blocking = bool(hard) or (bool(soft_missing) and self.missing_required == "fail") or (
                bool(report.messages) and not report.conformant)
            refuse = blocking and self.on_nonconformant == "refuse"
        model_missing = report.metadata_completeness.missing_by.get("model", [])
        if model_missing:
            reasons.append(f"fields the model needs are missing: {', '.join(model_missing)}")
            refuse = refuse or self.refuse_on_metadata_missing
        if refuse:
            return PolicyDecision(action="refuse", reasons=reasons)
        return PolicyDecision(action="analyze_with_warning" if reasons else "analyze", reasons=reasons)

    def enforce(self, report: ConformanceReport) -> PolicyDecision:
        """``decide``, raising ``NonconformantSeriesError`` when the decision is to refuse."""
        d = self.decide(report)
        if not d.proceed:
            what = report.protocol.id if report.protocol else "any protocol"
            raise NonconformantSeriesError(
                f"series {report.series_instance_uid or '(no UID)'} does not conform to {what}: "
                + "; ".join(d.reasons[:5]) + (" ..." if len(d.reasons) > 5 else "")
            )
        return d
