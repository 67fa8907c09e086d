"""Match current findings with a prior result of the same patient and report growth.

Matching is by nearest centre (LPS mm) within ``max_distance_mm``, one-to-one, closest pairs first.
This assumes the two studies share a patient frame closely enough (same scanner table convention,
no registration); the threshold keeps mismatches from producing growth figures.
"""

from __future__ import annotations

import math
import os
from datetime import date
from typing import Optional, Sequence

import numpy as np

from ..results import AnalysisResult, Finding


def volume_doubling_time_days(v0_mm3: float, v1_mm3: float, interval_days: float) -> Optional[float]:
    """VDT = interval * ln 2 / ln(V1 / V0). None when it is undefined (no change, or bad volumes);
    negative when the lesion shrank (the convention of the volumetry literature)."""
    if v0_mm3 <= 0 or v1_mm3 <= 0 or interval_days <= 0 or v0_mm3 == v1_mm3:
        return None
    return interval_days * math.log(2.0) / math.log(v1_mm3 / v0_mm3)


def interval_days(prior_date: str | date, current_date: str | date) -> float:
    """Days between two ISO (yyyy-mm-dd) or DICOM (yyyymmdd) dates."""

    def parse(d: str | date) -> date:
        if isinstance(d, date):
            return d
        s = d.replace("-", "")
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))

    return float((parse(current_date) - parse(prior_date)).days)


def match_prior(
    current: Sequence[Finding],
    prior: AnalysisResult | Sequence[Finding] | str | os.PathLike[str],
    *,
    interval_days: Optional[float] = None,
    max_distance_mm: float = 15.0,
    prior_study_uid: str = "",
) -> int:
    """Fill ``Finding.prior`` of each matched current finding; returns the number matched.

    ``prior`` is an AnalysisResult, its findings, or a findings.json path."""
    if isinstance(prior, (str, os.PathLike)):
        prior = AnalysisResult.read(prior)
    if isinstance(prior, AnalysisResult):
        prior_study_uid = prior_study_uid or prior.study_instance_uid
        prior_findings = list(prior.findings)
    else:
        prior_findings = list(prior)
    cur = [f for f in current if len(f.center_lps_mm) == 3]
    old = [p for p in prior_findings if len(p.center_lps_mm) == 3]
    if not cur or not old:
        return 0
    a = np.array([f.center_lps_mm for f in cur])
    b = np.array([p.center_lps_mm for p in old])
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    # same label only
    for i, f in enumerate(cur):
        for j, p in enumerate(old):
            if f.label != p.label:
                d[i, j] = np.inf
    matched = 0
    used_c: set[int] = set()
    used_p: set[int] = set()
    for flat in np.argsort(d, axis=None):
        i, j = divmod(int(flat), d.shape[1])
        if not np.isfinite(d[i, j]) or d[i, j] > max_distance_mm:
            break
        if i in used_c or j in used_p:
            continue
        used_c.add(i)
        used_p.add(j)
        cur[i].prior = growth(cur[i], old[j], float(d[i, j]), interval_days, prior_study_uid)
        matched += 1
    return matched


def growth(
    f: Finding, p: Finding, distance_mm: float, days: Optional[float], prior_study_uid: str = ""
) -> dict:
    """Change from prior ``p`` to current ``f`` (unrounded; positive = growth)."""

    def diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None else a - b

    out: dict = {
        "finding_id": p.id,
        "tracking_uid": p.tracking_uid,
        "study_instance_uid": prior_study_uid,
        "distance_mm": distance_mm,
        "interval_days": days,
        "mean_diameter_mm": p.mean_diameter_mm,
        "long_axis_mm": p.long_axis_mm,
        "volume_mm3": p.volume_mm3,
        "type": p.type,
        "solid_core_mean_diameter_mm": p.solid_core_mean_diameter_mm,
        # the prior's categories by system ("Lung-RADS" -> "4A"); the rules engine keys them by its
        # rule-set id, which this earlier stage does not know: the pipeline maps them
        "categories_by_system": {c.system: c.value for c in p.categories},
        "mean_diameter_change_mm": diff(f.mean_diameter_mm, p.mean_diameter_mm),
        "long_axis_change_mm": diff(f.long_axis_mm, p.long_axis_mm),
        "volume_change_mm3": diff(f.volume_mm3, p.volume_mm3),
        "volume_change_percent": (
            None if not p.volume_mm3 or f.volume_mm3 is None else 100.0 * (f.volume_mm3 - p.volume_mm3) / p.volume_mm3
        ),
        "volume_doubling_time_days": (
            None
            if days is None or f.volume_mm3 is None or p.volume_mm3 is None
            else volume_doubling_time_days(p.volume_mm3, f.volume_mm3, days)
        ),
    }
    if f.solid_core_mean_diameter_mm is not None and p.solid_core_mean_diameter_mm is not None:
        out["solid_core_mean_diameter_change_mm"] = f.solid_core_mean_diameter_mm - p.solid_core_mean_diameter_mm
    return out
