"""Finding the rule sets: every ``*.yaml`` under ``Resources/rules/`` (or ``$MEDIMGAI_RESOURCES/rules``),
validated on load and cached until the file changes."""

from __future__ import annotations

from pathlib import Path

from ..errors import ContentError, RuleError
from ..resources import resource_path
from .schema import RuleSet, load_rule_set_file

_CACHE: dict[Path, tuple[float, RuleSet]] = {}


def rules_dir() -> Path:
    return resource_path("rules")


def _load_cached(path: Path) -> RuleSet:
    path = path.resolve()
    mtime = path.stat().st_mtime
    hit = _CACHE.get(path)
    if hit and hit[0] == mtime:
        return hit[1]
    rs = load_rule_set_file(path)
    _CACHE[path] = (mtime, rs)
    return rs


def rule_set_files(directory: Path | None = None) -> list[Path]:
    d = directory or rules_dir()
    if not d.is_dir():
        raise ContentError(f"rules directory {d} does not exist (set MEDIMGAI_RESOURCES?)")
    return sorted(d.glob("*.yaml"))


def list_rule_sets(directory: Path | None = None) -> list[RuleSet]:
    """All rule sets, validated (a broken file is an error naming it, not a silently missing entry)."""
    sets = [_load_cached(p) for p in rule_set_files(directory)]
    seen: dict[tuple[str, str], int] = {}
    for rs in sets:
        key = (rs.id, rs.version)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            raise ContentError(f"rule set {rs.id} version {rs.version} is defined by more than one file in {directory or rules_dir()}")
    return sets


def load_rule_set(ref: str | Path, version: str | None = None) -> RuleSet:
    """A rule set by id ("lung-rads"; the newest effective version unless ``version``), or by file path."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return _load_cached(p)
    ref_s = str(ref).strip().lower()
    if "@" in ref_s and version is None:
        ref_s, version = ref_s.split("@", 1)
    candidates = [rs for rs in list_rule_sets() if rs.id == ref_s and (version is None or rs.version.lower() == version.lower())]
    if not candidates:
        known = ", ".join(sorted({f"{rs.id}@{rs.version}" for rs in list_rule_sets()})) or "none"
        wanted = f"{ref_s}@{version}" if version else ref_s
        raise RuleError(f"no rule set {wanted!r} in {rules_dir()} (available: {known})")
    return max(candidates, key=lambda rs: rs.effective)
