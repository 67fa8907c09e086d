"""hippodeep: MRI hippocampal volumetry and intracranial volume (Thyreau et al., Medical Image
Analysis 2018; weights MIT, github.com/bthyreau/hippodeep_pytorch), reimplemented from SPEC.md."""

from .networks import AffineNet, HeadNet, HippoNet
from .pipeline import BINARY_THRESHOLD, HippodeepPipeline, HippodeepResult

__all__ = ["AffineNet", "BINARY_THRESHOLD", "HeadNet", "HippoNet", "HippodeepPipeline", "HippodeepResult"]
