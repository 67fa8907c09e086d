"""``medimgai rules list | show ID | apply FINDINGS_JSON``: the rule sets and what they say about findings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import RuleError
from ..results import FINDINGS_SCHEMA, AnalysisResult, Finding


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rules", help="clinical rule sets (Lung-RADS, Fleischner): list, show, apply to findings")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    rsub.required = True

    pl = rsub.add_parser("list", help="the available rule sets with version, effective date and source")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=_list)

    ps = rsub.add_parser("show", help="one rule set: citation, conventions, categories and every table row")
    ps.add_argument("id", help="rule set id (e.g. lung-rads, fleischner-2017; ID@VERSION for a specific version)")
    ps.add_argument("--json", action="store_true", help="the whole rule set as JSON")
    ps.set_defaults(func=_show)

    pa = rsub.add_parser("apply", help="categorize the findings of a findings.json (or a JSON list of findings)")
    pa.add_argument("findings", type=Path, help="findings.json (schema medimgai.findings/1) or a JSON list of findings")
    pa.add_argument("--rules", default="", help="comma-separated rule set ids (default: all)")
    pa.add_argument(
        "--context",
        default="",
        help="patient/exam context, e.g. age=67,risk=high,screening=true,exam=baseline,"
        "known_cancer=false,immunocompromised=false (overrides the context stored in the file)",
    )
    pa.add_argument("--json", action="store_true", help="print the evaluations as JSON")
    pa.add_argument("--out", type=Path, help="write the findings.json with the categories filled in to this path")
    pa.set_defaults(func=_apply)


# --------------------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from ..rules import list_rule_sets

    sets = list_rule_sets()
    if args.json:
        print(json.dumps([
            {"id": rs.id, "version": rs.version, "system": rs.system, "title": rs.title,
             "effective": rs.effective.isoformat(), "source": rs.source, "rows": len(rs.rows)}
            for rs in sets
        ], indent=2))
        return 0
    print(f"{'ID':<18} {'VERSION':<8} {'EFFECTIVE':<10} {'ROWS':>4}  TITLE")
    for rs in sets:
        print(f"{rs.id:<18} {rs.version:<8} {rs.effective.isoformat():<10} {len(rs.rows):>4}  {rs.title}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..rules import load_rule_set

    rs = load_rule_set(args.id)
    if args.json:
        print(json.dumps(rs.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
        return 0
    print(f"{rs.system} {rs.version} ({rs.id}): {rs.title}")
    print(f"Source:     {rs.source}")
    print(f"Effective:  {rs.effective.isoformat()}")
    for line in rs.changelog:
        print(f"Changelog:  {line}")
    print(f"Applies to: {rs.applicability.description}")
    print(f"Measuring:  {rs.measurement.description}")
    if rs.growth:
        print(f"Growth:     {rs.growth.description}")
    print(f"Study:      {rs.study.description}")
    print("\nCategories:")
    for c in rs.categories:
        fu = ""
        if c.follow_up_months is not None:
            fu = f" [follow-up {c.follow_up_months:g}" + (f"-{c.follow_up_months_max:g}" if c.follow_up_months_max else "") + " months]"
        print(f"  {c.value}{' - ' + c.descriptor if c.descriptor else ''}: {c.recommendation}{fu}")
    print("\nRows (first match decides):")
    for r in rs.rows:
        print(f"  {r.id:<34} -> {r.category:<10} if {_when_text(r.when)}")
        print(f"  {'':<34}    source: {r.source}")
    for up in rs.upgrades:
        print(f"  upgrade {', '.join(up.from_categories)} -> {up.to} when flag {up.flag}: {up.source}")
    for n in rs.notes:
        print(f"Note: {n}")
    return 0


def _when_text(when: Any) -> str:
    parts = []
    for name, value in when:
        if value is None:
            continue
        if hasattr(value, "text"):
            parts.append(f"{name} {value.text()}")
        elif isinstance(value, list):
            parts.append(f"{name} in {'/'.join(value)}")
        else:
            parts.append(f"{name}={value}")
    return ", ".join(parts) or "always"


# --------------------------------------------------------------------------------------------------


def _read_findings(path: Path) -> tuple[AnalysisResult, bool]:
    """The file as an AnalysisResult; the flag says whether it was a full findings.json."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RuleError(f"cannot read findings file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise RuleError(f"findings file {path} is not JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        if isinstance(data, dict) and data.get("schema") == FINDINGS_SCHEMA:
            return AnalysisResult.model_validate(data), True
        items = data.get("findings") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise RuleError(f"findings file {path}: expected a {FINDINGS_SCHEMA} file or a JSON list of findings")
        findings = []
        for i, item in enumerate(items):
            try:
                findings.append(Finding.model_validate(item))
            except ValidationError as exc:
                first = exc.errors()[0]
                fid = item.get("id", "?") if isinstance(item, dict) else "?"
                loc = ".".join(str(p) for p in first["loc"])
                raise RuleError(f"findings file {path}: finding {i} ({fid}): field {loc}: {first['msg']}") from None
        return AnalysisResult(findings=findings), False
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RuleError(f"findings file {path}: field {loc}: {first['msg']}") from None


def _apply(args: argparse.Namespace) -> int:
    from ..rules import RuleContext, evaluate, list_rule_sets, load_rule_set, make_context, parse_context_arg

    result, full = _read_findings(args.findings)
    given = {k: v for k, v in (result.context or {}).items() if k in RuleContext.model_fields}
    context = make_context(**{**given, **parse_context_arg(args.context)})
    ids = [s.strip() for s in args.rules.split(",") if s.strip()]
    rule_sets = [load_rule_set(i) for i in ids] if ids else list_rule_sets()

    evaluations = [evaluate(result.findings, context, rs) for rs in rule_sets]
    for ev in evaluations:
        ev.apply_to(result, context)
    if args.out:
        result.write(args.out)

    if args.json:
        print(json.dumps([ev.model_dump(mode="json") for ev in evaluations], indent=2))
        return 0
    by_id = {f.id: f for f in result.findings}
    for ev in evaluations:
        print(f"{ev.system} {ev.rule_set.version} ({ev.rule_set.id})")
        if not ev.applicable:
            print(f"  not applicable: {ev.reason}\n")
            continue
        for fid, cat in ev.categories.items():
            f = by_id[fid]
            facts = ev.facts.get(fid)
            size = f"{f.mean_diameter_mm:.2f}" if f.mean_diameter_mm is not None else "-"
            used = f"{facts.mean_diameter_mm:g}" if facts and facts.mean_diameter_mm is not None else "-"
            status = facts.status if facts and facts.status else "-"
            print(f"  {fid:<5} {f.type or '?':<12} mean {size:>6} mm (rule size {used:>5}) {status:<8} -> {cat.value}"
                  f"  [{cat.rule_id}]")
            print(f"        {cat.recommendation}")
        study = ev.study
        by = f" (from {ev.deciding_finding})" if ev.deciding_finding else ""
        print(f"  study: {study.value}{by}: {study.recommendation}")
        for n in ev.notes:
            print(f"  note: {n}")
        print()
    if args.out:
        print(f"wrote {args.out}")
    return 0
