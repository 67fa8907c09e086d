"""Inference: runners (MONAI bundle, TorchScript, native, external command) behind one interface,
device selection, preprocessing from the model card, sliding-window inference, outputs back on the
exact source grid, progress, cancellation and a subprocess worker."""

from .device import select_device
from .engine import InferenceResult, load_input, make_runner, run_model
from .native import register_network, register_pipeline
from .runners import Prediction, RunContext, RunOptions, Runner

__all__ = [
    "InferenceResult",
    "Prediction",
    "RunContext",
    "RunOptions",
    "Runner",
    "load_input",
    "make_runner",
    "register_network",
    "register_pipeline",
    "run_model",
    "select_device",
]
