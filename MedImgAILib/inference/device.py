"""Device choice (CUDA, MPS, CPU) and the memory check that runs before any inference."""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from ..errors import ModelError

log = logging.getLogger(__name__)


class DeviceError(ModelError):
    kind = "device"


class InsufficientMemoryError(ModelError):
    kind = "memory"


def select_device(preference: Optional[str] = None) -> torch.device:
    """``None``/"auto": CUDA, then Apple MPS, then CPU. Otherwise the named device, checked."""
    pref = (preference or os.environ.get("MEDIMGAI_DEVICE") or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError:
        raise DeviceError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {preference!r} requested but this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {preference!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {preference!r} requested but MPS is not available; use --device cpu")
    return dev


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def estimate_bytes(grid_voxels: int, in_channels: int, out_channels: int, roi_voxels: int, sw_batch: int,
                   activation_bytes_per_voxel: float) -> tuple[int, int]:
    """(bytes on the aggregation device, bytes on the compute device) for one sliding-window run:
    the input, the output sum and the weight map over the whole grid; one batch of windows through the
    network (activations dominate, ``activation_bytes_per_voxel`` per window voxel)."""
    whole = grid_voxels * 4 * (in_channels + out_channels + 1)
    windows = int(roi_voxels * sw_batch * activation_bytes_per_voxel)
    return whole, windows


def check_memory(device: torch.device, whole: int, windows: int, *, what: str) -> bool:
    """True when everything fits on ``device``. On a GPU where only the windows fit, the caller keeps
    the aggregation on the CPU (returns False); where nothing fits anywhere, a clear error."""
    gib = 1 << 30
    host = available_bytes(torch.device("cpu"))
    if device.type == "cuda":
        free = available_bytes(device)
        if whole + windows <= free * 0.9:
            return True
        if windows <= free * 0.9 and whole <= host * 0.9:
            log.info("%s: aggregation on the CPU (needs %.1f GiB, GPU has %.1f GiB free)", what, (whole + windows) / gib, free / gib)
            return False
        if whole + windows <= host * 0.9:
            raise InsufficientMemoryError(
                f"{what}: one batch of windows needs ~{windows / gib:.1f} GiB but the GPU has {free / gib:.1f} GiB free; "
                f"use a smaller window (--roi) or --device cpu"
            )
    if whole + windows > host * 0.9:
        raise InsufficientMemoryError(
            f"{what}: needs ~{(whole + windows) / gib:.1f} GiB of memory but {host / gib:.1f} GiB is available; "
            f"close other programs, crop the volume, or use a smaller window (--roi) / batch"
        )
    return True
