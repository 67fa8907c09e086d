"""hippodeep: MRI hippocampal volumetry and intracranial volume (Thyreau et al., Medical Image
Analysis 2018; weights MIT, github.com/bthyreau/hippodeep_pytorch), reimplemented from SPEC.md.

``HippodeepModel.load()`` then ``analyze(volume)`` -> ``HippodeepResult`` (masks on the source grid,
volumes) -> ``to_analysis_result`` (findings.json). ``inputs.load_t1`` reads NIfTI or DICOM."""

from .checks import UnsupportedInputError, check_input, check_output
from .inputs import load_t1
from .model import CARD_ID, HippodeepModel, analyze_file, resolve_weight_files, select_device
from .networks import AffineNet, HeadNet, HippoNet
from .pipeline import BINARY_THRESHOLD, HippodeepPipeline, HippodeepResult

__all__ = [
    "AffineNet",
    "BINARY_THRESHOLD",
    "CARD_ID",
    "HeadNet",
    "HippoNet",
    "HippodeepModel",
    "HippodeepPipeline",
    "HippodeepResult",
    "UnsupportedInputError",
    "analyze_file",
    "check_input",
    "check_output",
    "load_t1",
    "resolve_weight_files",
    "select_device",
]
