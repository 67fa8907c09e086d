"""Protocol library, conformance checks and reference-free image quality (issue 7).

``check_series(metadata, volume, protocol_id=None) -> ConformanceReport`` is what the pipeline calls
before inference; ``ConformancePolicy`` decides whether a nonconforming series is analyzed with a
warning or refused. ``run_sweep`` (``sweep``) is the physicist's what-if tool.
"""

from .conformance import (
    Check,
    ConformancePolicy,
    ConformanceReport,
    MetadataCompleteness,
    NonconformantSeriesError,
    PolicyDecision,
    check_series,
    metadata_completeness,
)
from .library import MatchResult, ProtocolLibrary, UnknownProtocolError, default_library, load_protocol_file
from .quality import measure_image_quality
from .schema import Criterion, Protocol
from .sweep import (
    AcquisitionSetting,
    CohortCases,
    PhantomGeneratorCases,
    SweepCase,
    SyntheticChestCases,
    TruthLesion,
    degrade,
    register_detector,
    run_sweep,
    threshold_detector,
    write_sweep_outputs,
)

__all__ = [
    "AcquisitionSetting",
    "CohortCases",
    "PhantomGeneratorCases",
    "SweepCase",
    "SyntheticChestCases",
    "TruthLesion",
    "degrade",
    "register_detector",
    "run_sweep",
    "threshold_detector",
    "write_sweep_outputs",
    "Check",
    "ConformancePolicy",
    "ConformanceReport",
    "Criterion",
    "MatchResult",
    "MetadataCompleteness",
    "NonconformantSeriesError",
    "PolicyDecision",
    "Protocol",
    "ProtocolLibrary",
    "UnknownProtocolError",
    "check_series",
    "default_library",
    "load_protocol_file",
    "measure_image_quality",
    "metadata_completeness",
]
