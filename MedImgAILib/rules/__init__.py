"""Clinical rules: documented, versioned criteria (Lung-RADS v2022, Fleischner 2017) applied to findings.

    from MedImgAILib.rules import load_rule_set, evaluate, RuleContext
    ev = evaluate(findings, RuleContext(screening=True, exam="baseline"), load_rule_set("lung-rads"))
    ev.study.value  # "4A"

The criteria are data (``Resources/rules/*.yaml``, schema in ``schema.py``); this package holds only
the generic engine. See docs/rules.md.
"""

from .context import FINDING_FLAGS, PriorMeasurement, RuleContext, infer_context, make_context, parse_context_arg
from .engine import Facts, StudyEvaluation, evaluate, evaluate_all, normalize_type, round_half_up
from .library import list_rule_sets, load_rule_set, rules_dir
from .schema import NOT_APPLICABLE, NOT_ASSESSABLE, RuleSet, load_rule_set_file

__all__ = [
    "FINDING_FLAGS",
    "NOT_APPLICABLE",
    "NOT_ASSESSABLE",
    "Facts",
    "PriorMeasurement",
    "RuleContext",
    "RuleSet",
    "StudyEvaluation",
    "evaluate",
    "evaluate_all",
    "infer_context",
    "list_rule_sets",
    "load_rule_set",
    "load_rule_set_file",
    "make_context",
    "normalize_type",
    "parse_context_arg",
    "round_half_up",
    "rules_dir",
]
