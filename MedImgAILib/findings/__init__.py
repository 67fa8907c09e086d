"""Findings: lesions from a model's label map, measured the way the clinical guidelines measure them,
and matched with a prior study for growth."""

from .extract import (
    LEFT_LUNG,
    LOBES,
    LUNG,
    NODULE,
    RIGHT_LUNG,
    FindingsError,
    LabelSpec,
    TypeThresholds,
    body_midline_x_lps,
    extract_findings,
    iter_label_specs,
    largest_axial_axes,
)
from .measure import AxialAxes, axial_axes, centroid_lps, max_3d_diameter
from .prior import growth, interval_days, match_prior, volume_doubling_time_days

__all__ = [
    "AxialAxes",
    "FindingsError",
    "LEFT_LUNG",
    "LOBES",
    "LUNG",
    "LabelSpec",
    "NODULE",
    "RIGHT_LUNG",
    "TypeThresholds",
    "axial_axes",
    "body_midline_x_lps",
    "centroid_lps",
    "extract_findings",
    "growth",
    "interval_days",
    "iter_label_specs",
    "largest_axial_axes",
    "match_prior",
    "max_3d_diameter",
    "volume_doubling_time_days",
]
