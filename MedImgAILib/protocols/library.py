"""Loading the protocol library and matching a series to a protocol.

Files live in ``Resources/protocols/*.yaml`` (or ``$MEDIMGAI_RESOURCES/protocols``, or a directory the
caller names). A file that does not satisfy the schema raises ``ContentError`` naming the file and the
field, so the physicist who edited it knows what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from pydantic import ValidationError

from ..dicom.metadata import SeriesMetadata
from ..errors import ContentError, ProtocolError
from ..fileio import parse_yaml
from ..resources import resource_path
from .schema import Protocol


class UnknownProtocolError(ProtocolError):
    kind = "unknown-protocol"


def _known_metadata_fields() -> set[str]:
    m = SeriesMetadata()
    out = set()
    for section in ("patient", "study", "series", "equipment", "acquisition"):
        for name in type(getattr(m, section)).model_fields:
            out.add(f"{section}.{name}")
    return out


def load_protocol_file(path: Path) -> Protocol:
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ContentError(f"protocol file {path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ContentError(f"protocol file {path}: cannot be read: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise ContentError(f"protocol file {path}: expected a mapping at the top level")
    try:
        proto = Protocol.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        # name the criterion rather than its list index where we can
        loc = first["loc"]
        if len(loc) >= 2 and loc[0] == "criteria" and isinstance(loc[1], int):
            crits = data.get("criteria") or []
            if loc[1] < len(crits) and isinstance(crits[loc[1]], dict) and "name" in crits[loc[1]]:
                where = f"criteria[{crits[loc[1]]['name']}]" + "".join(f".{p}" for p in loc[2:])
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ContentError(f"protocol file {path}: field {where}: {first['msg']}{more}") from None
    known = _known_metadata_fields()
    for c in proto.criteria:
        if c.section not in ("derived", "iq") and c.field not in known:
            raise ContentError(
                f"protocol file {path}: field criteria[{c.name}].field: {c.field!r} is not a SeriesMetadata field"
            )
    for f in proto.metadata_required:
        if f not in known:
            raise ContentError(f"protocol file {path}: field metadata_required: {f!r} is not a SeriesMetadata field")
    if path.stem != proto.id:
        raise ContentError(f"protocol file {path}: field id: {proto.id!r} differs from the file name {path.stem!r}")
    return proto


@dataclass
class MatchResult:
    protocol: Protocol
    #: the strongest evidence kind: "given" | "procedure_code" | "description" | "body_part"
    matched_by: str
    #: every piece of evidence, e.g. ["modality=CT", "series_description~/(?i)low.?dose/"]
    evidence: list[str] = field(default_factory=list)
    score: int = 0


_SCORES = {"procedure_code": 100, "description": 10, "body_part": 5}


def _text(md: SeriesMetadata, dotted: str) -> str:
    v = md.get(dotted).value
    return "" if v is None else str(v)


def match_protocol(protocol: Protocol, md: SeriesMetadata) -> MatchResult | None:
    """How strongly ``md`` matches ``protocol`` (None: it does not)."""
    rule = protocol.match
    modality = _text(md, "series.modality").upper()
    if modality not in rule.modality:
        return None
    texts = {
        "protocol_name": _text(md, "series.protocol_name"),
        "series_description": _text(md, "series.series_description"),
        "study_description": _text(md, "study.study_description"),
    }
    for pat in rule.exclude_patterns:
        for name, t in texts.items():
            if t and re.search(pat, t):
                return None
    evidence = [f"modality={modality}"]
    kinds: list[str] = []
    code = _text(md, "study.procedure_code")
    if code:
        # "scheme:value meaning": a rule entry matches the "scheme:value" or the bare value
        scheme_value = code.split(" ", 1)[0]
        bare = scheme_value.split(":", 1)[-1]
        for rc in rule.procedure_codes:
            if rc in (scheme_value, bare):
                evidence.append(f"procedure_code={scheme_value}")
                kinds.append("procedure_code")
                break
    for pat in rule.description_patterns:
        for name, t in texts.items():
            if t and re.search(pat, t):
                evidence.append(f"{name}~/{pat}/")
                kinds.append("description")
                break
    body = re.sub(r"[^A-Z]", "", _text(md, "series.body_part_examined").upper())
    if body and body in {re.sub(r"[^A-Z]", "", b) for b in rule.body_part}:
        evidence.append(f"body_part={body}")
        kinds.append("body_part")
    if not kinds or (kinds == ["body_part"] and not rule.body_part_alone):
        return None
    score = sum(_SCORES[k] for k in kinds)
    best = max(kinds, key=lambda k: _SCORES[k])
    return MatchResult(protocol=protocol, matched_by=best, evidence=evidence, score=score)


class ProtocolLibrary:
    """All protocols of one directory, by id."""

    def __init__(self, protocols: Iterable[Protocol], directory: Path | None = None) -> None:
        self.directory = directory
        self._by_id: dict[str, Protocol] = {}
        for p in protocols:
            if p.id in self._by_id:
                raise ContentError(f"protocol library {directory}: id {p.id!r} appears twice")
            self._by_id[p.id] = p

    @classmethod
    def load(cls, directory: str | Path | None = None) -> "ProtocolLibrary":
        d = Path(directory) if directory is not None else resource_path("protocols")
        if not d.is_dir():
            raise ContentError(f"protocol library {d} does not exist (set MEDIMGAI_RESOURCES or pass a directory)")
        files = sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml"))
        if not files:
            raise ContentError(f"protocol library {d} holds no *.yaml files")
        return cls((load_protocol_file(f) for f in files), directory=d)

    def __iter__(self):
        return iter(sorted(self._by_id.values(), key=lambda p: p.id))

    def __len__(self) -> int:
        return len(self._by_id)

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def get(self, protocol_id: str) -> Protocol:
        try:
            return self._by_id[protocol_id]
        except KeyError:
            raise UnknownProtocolError(
                f"no protocol {protocol_id!r} in {self.directory}; known: {', '.join(self.ids())}"
            ) from None

    def match(self, md: SeriesMetadata, candidates: Sequence[str] | None = None) -> MatchResult | None:
        """The best-matching protocol, or None. ``candidates`` limits the choice (a model card's list)."""
        pool = [self.get(c) for c in candidates] if candidates else list(self)
        results = [r for r in (match_protocol(p, md) for p in pool) if r is not None]
        if not results:
            return None
        results.sort(key=lambda r: (r.score, r.protocol.match.priority, r.protocol.id), reverse=True)
        return results[0]


_DEFAULT: dict[str, ProtocolLibrary] = {}


def default_library() -> ProtocolLibrary:
    """The library under the resources directory, loaded once per directory per process."""
    d = str(resource_path("protocols"))
    if d not in _DEFAULT:
        _DEFAULT[d] = ProtocolLibrary.load(d)
    return _DEFAULT[d]
