"""Chest-CT phantoms: an analytic chest (body wall, ribs, spine, mediastinum, heart, lungs with
space-filling pulmonary vessel trees) with nodules of known type, size, shape and position, rendered
on any CT grid with a slice profile, a reconstruction kernel and noise; written as a valid CT Image
Storage series plus ``truth.json``. See docs/phantoms.md."""

from .generate import PhantomCase, build_truth, generate_phantom, write_phantom_series, write_study
from .sampling import sample_spec
from .spec import (
    PRESETS,
    AcquisitionSpec,
    NoduleSpec,
    PhantomSpec,
    PhantomSpecError,
    RandomNodules,
    StudyContext,
    spec_from_preset,
)

__all__ = [
    "AcquisitionSpec",
    "NoduleSpec",
    "PRESETS",
    "PhantomCase",
    "PhantomSpec",
    "PhantomSpecError",
    "RandomNodules",
    "StudyContext",
    "build_truth",
    "generate_phantom",
    "sample_spec",
    "spec_from_preset",
    "write_phantom_series",
    "write_study",
]
