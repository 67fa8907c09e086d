"""Runners: one interface, four kinds. ``Runner.run(volume, ctx) -> Prediction`` takes a ``Volume`` on
any grid and returns a label map (and, for network runners, a foreground probability map) on exactly
that grid.

- ``bundle``: a MONAI bundle (``configs/metadata.json`` or ``metadata.json``, ``configs/inference.json``,
  ``models/model.pt`` state_dict or ``models/model.ts``), parsed with ``monai.bundle.ConfigParser``;
- ``torchscript``: a ``torch.jit`` archive;
- ``native``: an ``nn.Module`` factory from :mod:`.native` plus a state_dict, optionally with a custom
  pipeline that owns preprocessing and postprocessing;
- ``external``: a command (nnU-Net / TotalSegmentator style), NIfTI in and NIfTI out.

The three network kinds share one pipeline (:class:`NetworkRunner`): optional CT crop box -> the
card's axis-aligned grid over the whole series -> MONAI sliding-window inference with MONAI's windows
over that whole grid, skipping those that miss the crop box (so the crop never changes the answer
inside it), AMP on GPU, optional bf16 on CPU -> activation -> probabilities resampled linearly back to
the source grid around each group of foreground -> threshold/argmax -> the card's component rules.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..errors import CancelledError, ModelError
from ..models.card import ModelCard, SlidingWindowSpec
from ..volume import Volume
from . import geometry as geo
from .device import InsufficientMemoryError, check_memory, estimate_bytes

log = logging.getLogger(__name__)

#: progress(stage, fraction 0..1 within the stage, message)
ProgressCallback = Callable[[str, float, str], None]


@dataclass
class RunOptions:
    """Knobs a caller may change without editing the card."""

    roi_size: Optional[tuple[int, int, int]] = None  # (i, j, k)
    overlap: Optional[float] = None
    sw_batch_size: Optional[int] = None
    blend_mode: Optional[str] = None  # "gaussian" | "constant"; None = the card's
    crop: Optional[str] = None  # "none" | "body" | "lungs"; None = the card's
    amp: Optional[bool] = None
    cpu_bf16: Optional[bool] = None
    channels_last: bool = True
    num_threads: Optional[int] = None
    return_probabilities: bool = True
    #: override the card's ``sliding_window.single_window_max_voxels`` (0 disables)
    single_window_max_voxels: Optional[int] = None
    #: bytes of activations per window voxel for the memory estimate (3D U-Nets: ~100-400)
    activation_bytes_per_voxel: float = 256.0


@dataclass
class RunContext:
    card: ModelCard
    device: torch.device
    options: RunOptions = field(default_factory=RunOptions)
    progress: Optional[ProgressCallback] = None
    cancel: Optional[threading.Event] = None
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(stage, max(0.0, min(1.0, fraction)), message)

    def check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"inference with {self.card.id} was cancelled")

    def timed(self, name: str) -> "_Timer":
        return _Timer(self, name)


class _Timer:
    def __init__(self, ctx: RunContext, name: str):
        self.ctx, self.name = ctx, name

    def __enter__(self) -> "_Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ctx.timings_s[self.name] = self.ctx.timings_s.get(self.name, 0.0) + time.perf_counter() - self.t0


@dataclass
class Prediction:
    labels: Volume  # uint8 label map on the source grid
    probabilities: Optional[Volume] = None  # float32 foreground probability on the source grid


# --- the runner interface ----------------------------------------------------------------------------
class Runner(ABC):
    kind: str = ""

    def __init__(self, card: ModelCard, weights_path: Optional[Path]):
        self.card = card
        self.weights_path = weights_path

    @abstractmethod
    def run(self, volume: Volume, ctx: RunContext) -> Prediction:
        """Labels (and probabilities) for ``volume``, on ``volume``'s own grid."""


class NetworkRunner(Runner):
    """Shared pipeline for runners that yield a torch network."""

    _network: Optional[torch.nn.Module] = None
    _network_device: Optional[torch.device] = None

    @abstractmethod
    def load_network(self) -> torch.nn.Module:
        """The network on the CPU, in eval mode."""

    def network(self, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
        if self._network is None:
            self._network = self.load_network().eval()
        if self._network_device != device:
            self._network = self._network.to(device)
            self._network_device = device
        if channels_last and not isinstance(self._network, torch.jit.ScriptModule):
            self._network = self._network.to(memory_format=torch.channels_last_3d)
        return self._network

    def run(self, volume: Volume, ctx: RunContext) -> Prediction:
        pipeline = self.card.runner.settings.get("pipeline")
        if pipeline:
            from .native import resolve_pipeline

            fn = resolve_pipeline(pipeline)
            with ctx.timed("load_network"):
                net = self.network(ctx.device)
            return fn(volume, net, ctx)
        return standard_pipeline(volume, self, ctx)


# --- the standard pipeline ---------------------------------------------------------------------------
def _window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    n = 1
    for size, r in zip(shape, roi):
        if size <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        n *= math.ceil((size - r) / interval) + 1
    return n


def _sliding_window_spec(card: ModelCard, opts: RunOptions) -> SlidingWindowSpec:
    sw = card.runner.sliding_window.model_copy()
    if opts.roi_size is not None:
        sw.roi_size = tuple(opts.roi_size)  # type: ignore[assignment]
    if opts.overlap is not None:
        sw.overlap = opts.overlap
    if opts.sw_batch_size is not None:
        sw.sw_batch_size = opts.sw_batch_size
    if opts.blend_mode is not None:
        sw.mode = opts.blend_mode  # type: ignore[assignment]
    return sw


def preprocess(volume: Volume, card: ModelCard, crop_mode: str) -> tuple[np.ndarray, geo.Grid, Optional[geo.Box]]:
    """Crop (CT only), resample onto the model grid, normalize. Returns (array [k,j,i] float32,
    model grid, crop box in source indices or None)."""
    box = None
    src = volume
    if crop_mode != "none" and (volume.modality or card.modality).upper() == "CT":
        c = card.crop
        box = geo.ct_crop_box(volume, crop_mode, margin_mm=c.margin_mm, body_threshold_hu=c.body_threshold_hu,
                              lung_threshold_hu=c.lung_threshold_hu)
        if box is not None:
            src = geo.crop_volume(volume, box)
    grid = geo.model_grid(geo.Grid.of(src), card.input.orientation, card.input.target_spacing_mm)
    if box is not None:
        # put the crop's grid on the lattice of the uncropped model grid: the network then sees the
        # same interpolated voxels with or without the crop, so the crop changes the work, not the answer
        full = geo.model_grid(geo.Grid.of(volume), card.input.orientation, card.input.target_spacing_mm)
        lin = full.affine[:3, :3]
        idx = np.floor(np.linalg.solve(lin, grid.affine[:3, 3] - full.affine[:3, 3]) + 1e-6)
        aff = grid.affine.copy()
        aff[:3, 3] = full.affine[:3, 3] + lin @ idx
        grid = geo.Grid(tuple(n + 1 for n in grid.shape_kji), aff)  # type: ignore[arg-type]
    arr = geo.resample(np.asarray(src.array, dtype=np.float32), geo.Grid.of(src), grid, interpolation="linear",
                       default=_background_value(card))
    intensity = card.input.intensity
    arr = geo.normalize(arr, intensity.mode, intensity.lower, intensity.upper)
    return arr, grid, box


@dataclass
class TiledInput:
    """The input of a tiled run laid on the *uncropped* model grid.

    The windows are the ones MONAI's ``sliding_window_inference`` places over the whole model grid;
    the crop only decides which of them run (``keep_box``: the crop box on the model grid; a window
    that does not intersect it is skipped). Every voxel inside ``keep_box`` is then covered by exactly
    the windows, with exactly the inputs, that a plain run over the whole grid gives it, so the crop
    changes the work and never the answer there. (A crop *grid* moves the window positions, and this
    network's output depends on where a window's borders fall: measured in docs/inference.md.)"""

    array: np.ndarray  # [k, j, i] float32 on ``grid``; outside the kept windows: background
    grid: geo.Grid  # the whole model grid
    keep_box: Optional[geo.Box]  # model-grid indices; None = no crop, every window runs
    windows: int  # windows over the whole grid
    kept_windows: int
    source_box: Optional[geo.Box]  # the crop box in source indices


def window_slices(shape_kji: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> list[tuple[slice, ...]]:
    """The windows ``monai.inferers.sliding_window_inference`` places over an image of ``shape_kji``
    (at least ``roi`` in every dimension), in its order."""
    from monai.data.utils import dense_patch_slices

    interval = tuple(int(r) if s == r else max(int(r * (1 - overlap)), 1) for s, r in zip(shape_kji, roi))
    return list(dense_patch_slices(tuple(shape_kji), tuple(roi), interval))


def _intersects(win: tuple[slice, ...], box: geo.Box) -> bool:
    return all(w.start < b and w.stop > a for w, a, b in zip(win, box.lo, box.hi))


def _source_box_on_grid(volume: Volume, box: geo.Box, grid: geo.Grid) -> geo.Box:
    """The source index box ``box`` as a box of ``grid`` indices that contains it (any orientation)."""
    corners = np.array([[i, j, k] for k in (box.lo[0], box.hi[0] - 1) for j in (box.lo[1], box.hi[1] - 1)
                        for i in (box.lo[2], box.hi[2] - 1)], dtype=np.float64)
    lps = corners @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    kji = np.linalg.solve(grid.affine[:3, :3], (lps - grid.affine[:3, 3]).T).T[:, ::-1]
    lo = np.maximum(np.floor(kji.min(axis=0) + 1e-6).astype(int), 0)
    hi = np.minimum(np.ceil(kji.max(axis=0) - 1e-6).astype(int) + 1, np.asarray(grid.shape_kji))
    return geo.Box(tuple(int(x) for x in lo), tuple(int(x) for x in hi))  # type: ignore[arg-type]


def preprocess_tiled(volume: Volume, card: ModelCard, crop_mode: str, roi: tuple[int, ...], overlap: float) -> TiledInput:
    """Resample + normalize onto the whole model grid, but only where a kept window reads."""
    full = geo.model_grid(geo.Grid.of(volume), card.input.orientation, card.input.target_spacing_mm)
    box = None
    if crop_mode != "none" and (volume.modality or card.modality).upper() == "CT":
        c = card.crop
        box = geo.ct_crop_box(volume, crop_mode, margin_mm=c.margin_mm, body_threshold_hu=c.body_threshold_hu,
                              lung_threshold_hu=c.lung_threshold_hu)
    if box is None or any(s < r for s, r in zip(full.shape_kji, roi)):
        # no crop, or a grid smaller than a window (MONAI pads it): the plain whole-grid input
        arr, _, _ = preprocess(volume, card, "none")
        n = len(window_slices(tuple(max(s, r) for s, r in zip(full.shape_kji, roi)), roi, overlap))
        return TiledInput(arr, full, None, n, n, None)
    keep = _source_box_on_grid(volume, box, full)
    wins = window_slices(full.shape_kji, roi, overlap)
    kept = [w for w in wins if _intersects(w, keep)]
    # the input only has to exist where a kept window reads: the bounding box of the kept windows
    lo = np.min([[w.start for w in win] for win in kept], axis=0)
    hi = np.max([[w.stop for w in win] for win in kept], axis=0)
    sub_aff = full.affine.copy()
    sub_aff[:3, 3] = full.affine[:3, :3] @ lo[::-1] + full.affine[:3, 3]
    sub = geo.Grid(tuple(int(x) for x in hi - lo), sub_aff)  # type: ignore[arg-type]
    # read only the source voxels around that region (+2 voxels, so that linear interpolation at its
    # edge uses the same neighbours as a whole-series resample)
    src_box = _source_box_on_grid(Volume(array=np.empty(sub.shape_kji, np.uint8), affine=sub.affine),
                                  geo.Box((0, 0, 0), sub.shape_kji), geo.Grid.of(volume))  # type: ignore[arg-type]
    src_box = geo.Box(tuple(max(a - 2, 0) for a in src_box.lo),  # type: ignore[arg-type]
                      tuple(min(b + 2, n) for b, n in zip(src_box.hi, volume.array.shape)))
    src = geo.crop_volume(volume, src_box)
    intensity = card.input.intensity
    bg = _background_value(card)
    part = geo.resample(np.asarray(src.array, dtype=np.float32), geo.Grid.of(src), sub, interpolation="linear", default=bg)
    bg_norm = float(geo.normalize(np.array([bg], np.float32), intensity.mode, intensity.lower, intensity.upper)[0])
    arr = np.full(full.shape_kji, bg_norm, dtype=np.float32)
    arr[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = geo.normalize(part, intensity.mode, intensity.lower, intensity.upper)
    return TiledInput(arr, full, keep, len(wins), len(kept), box)


def _background_value(card: ModelCard) -> float:
    """What lies outside the scanned field: air for CT windows, 0 otherwise."""
    it = card.input.intensity
    return float(it.lower) if it.mode == "window" and it.lower is not None else 0.0


def sliding_window_predict(net: torch.nn.Module, arr: np.ndarray, card: ModelCard, ctx: RunContext,
                           keep_box: Optional[geo.Box] = None, allow_single: bool = True) -> np.ndarray:
    """Sliding-window inference on one preprocessed array; returns probabilities [C, k, j, i] float32
    (softmax/sigmoid applied per the card). With ``keep_box`` only the windows intersecting it run and
    everything outside it is background."""

    opts = ctx.options
    sw = _sliding_window_spec(card, opts)
    tiled_roi = tuple(int(x) for x in reversed(sw.roi_size))
    out_ch = card.num_classes if card.postprocessing_spec.activation == "softmax" else len(card.labels)
    device = ctx.device
    what = f"{card.id} on {device.type}"

    def fits(roi: tuple[int, ...], batch: int) -> bool:
        whole, windows = estimate_bytes(int(np.prod(arr.shape)), card.input.channels, out_ch, int(np.prod(roi)),
                                        batch, opts.activation_bytes_per_voxel)
        return check_memory(device, whole, windows, what=what)

    attempts: list[tuple[torch.device, int, tuple[int, ...], bool]] = []
    limit = sw.single_window_max_voxels if opts.single_window_max_voxels is None else opts.single_window_max_voxels
    if allow_single and limit and opts.roi_size is None:
        m = sw.size_multiple
        single = tuple(int(math.ceil(s / m) * m) for s in arr.shape)
        if int(np.prod(single)) <= limit:
            # one window over the whole (cropped) grid: every voxel computed once, no blending seams
            try:
                attempts.append((device, 1, single, fits(single, 1)))
            except InsufficientMemoryError:
                pass  # tile instead
    attempts.append((device, sw.sw_batch_size, tiled_roi, fits(tiled_roi, sw.sw_batch_size)))
    if device.type == "cuda":  # fallbacks on GPU out-of-memory: smaller batch, smaller window, CPU
        m = sw.size_multiple
        small_roi = tuple(max(m, (r // 2) // m * m) for r in tiled_roi)
        attempts += [(device, 1, tiled_roi, False), (device, 1, small_roi, False),
                     (torch.device("cpu"), sw.sw_batch_size, tiled_roi, True)]

    last_exc: Optional[BaseException] = None
    for dev, batch, roi, agg_on_dev in attempts:
        try:
            return _run_windows(net, arr, card, ctx, dev, batch, roi, sw.overlap, sw.mode, agg_on_dev, keep_box, out_ch)
        except torch.cuda.OutOfMemoryError as exc:  # only raised on CUDA
            last_exc = exc
            torch.cuda.empty_cache()
            msg = f"GPU out of memory with window {roi} x {batch}; retrying smaller / on CPU"
            log.warning(msg)
            ctx.warnings.append(msg)
    raise ModelError(f"{card.id}: out of memory on every fallback ({last_exc})")


def _run_windows(net_src: torch.nn.Module, arr: np.ndarray, card: ModelCard, ctx: RunContext, device: torch.device,
                 batch: int, roi: tuple[int, ...], overlap: float, mode: str, aggregate_on_device: bool,
                 keep_box: Optional[geo.Box] = None, out_ch: int = 1) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    opts = ctx.options
    channels_last = opts.channels_last and device.type == "cpu"
    runner = ctx.info.get("_runner")
    net = runner.network(device, channels_last=channels_last) if runner is not None else net_src.to(device)
    ctx.info.update(device=str(device), roi_size_ijk=list(reversed(roi)), sw_batch_size=batch, overlap=overlap)

    n_windows = _window_count(arr.shape, roi, overlap)
    if keep_box is not None and all(s >= r for s, r in zip(arr.shape, roi)):
        kept = [_intersects(w, keep_box) for w in window_slices(arr.shape, roi, overlap)]
        n_run = sum(kept)
        total = sum(any(kept[b:b + batch]) for b in range(0, len(kept), batch))  # MONAI's batches
    else:
        keep_box = None  # MONAI pads a grid smaller than the window: its coordinates are not ours
        n_run = n_windows
        total = max(1, math.ceil(n_windows / batch))
    ctx.info.update(windows=n_windows, windows_run=n_run)
    done = [0]

    def predictor(x: torch.Tensor, coords: list[list[slice]]) -> torch.Tensor:
        ctx.check_cancelled()
        run = [i for i, c in enumerate(coords) if keep_box is None or _intersects(tuple(c[2:]), keep_box)]
        if not run:
            # a window wholly outside the crop: its output only reaches voxels outside the crop box,
            # which are background anyway (set after blending)
            return torch.zeros((x.shape[0], out_ch, *x.shape[2:]), dtype=x.dtype, device=x.device)
        xs = x if len(run) == x.shape[0] else x[run]
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last_3d)
        y = net(xs)
        if len(run) != x.shape[0]:
            full = torch.zeros((x.shape[0], *y.shape[1:]), dtype=y.dtype, device=y.device)
            full[run] = y
            y = full
        done[0] += 1
        ctx.report("infer", min(1.0, done[0] / max(1, total)), f"window batch {done[0]}/{total}")
        return y

    amp = card.runner.amp if opts.amp is None else opts.amp
    bf16 = card.runner.cpu_bf16 if opts.cpu_bf16 is None else opts.cpu_bf16
    if device.type == "cuda" and amp:
        autocast = torch.autocast("cuda", dtype=torch.float16)
        ctx.info["precision"] = "float16 autocast"
    elif device.type == "cpu" and bf16:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        ctx.info["precision"] = "bfloat16 autocast"
    else:
        autocast = nullcontext()
        ctx.info["precision"] = "float32"

    x = torch.from_numpy(arr)[None, None]
    if card.input.channels > 1:
        x = x.expand(-1, card.input.channels, -1, -1, -1)
    agg_device = device if aggregate_on_device else torch.device("cpu")
    with torch.inference_mode(), autocast:
        logits = sliding_window_inference(
            x.to(agg_device), roi_size=roi, sw_batch_size=batch, predictor=predictor, overlap=overlap, mode=mode,
            sw_device=device, device=agg_device, with_coord=True,
        )
    logits = logits.float()
    act = card.postprocessing_spec.activation
    if act == "softmax":
        probs = torch.softmax(logits, dim=1)
    elif act == "sigmoid":
        probs = torch.sigmoid(logits)
    else:
        probs = logits
    out = probs[0].cpu().numpy()
    if keep_box is not None:
        # outside the crop box is background (and there blending mixed in skipped windows)
        inside = np.zeros(out.shape[1:], dtype=bool)
        inside[keep_box.slices] = True
        out[:, ~inside] = 0.0
        if act == "softmax":
            out[0, ~inside] = 1.0
    return out


def probabilities_to_labels(probs_src: np.ndarray, card: ModelCard) -> np.ndarray:
    """[C, ...] probabilities on the source grid -> uint8 label map."""
    pp = card.postprocessing_spec
    if pp.activation == "softmax":
        if probs_src.shape[0] == 2:  # binary: the foreground channel against 0.5 is argmax
            return (probs_src[1] > pp.threshold).astype(np.uint8) * np.uint8(card.labels[0].value)
        return np.argmax(probs_src, axis=0).astype(np.uint8)
    out = np.zeros(probs_src.shape[1:], dtype=np.uint8)
    best = np.zeros(probs_src.shape[1:], dtype=np.float32)
    for c, lab in enumerate(card.labels):  # sigmoid: one channel per label, highest wins
        sel = (probs_src[c] > pp.threshold) & (probs_src[c] > best)
        out[sel] = lab.value
        best = np.maximum(best, probs_src[c])
    return out


def component_elongation(coords_kji: np.ndarray, voxel_axes_mm: np.ndarray) -> float:
    """sqrt(largest / second largest eigenvalue) of the covariance of voxel positions in mm: ~1 for a
    sphere or a disc (a nodule, also one flattened or stretched a little by thick slices), large for a
    tube (a vessel or an airway wall segment). ``voxel_axes_mm`` is the affine's 3x3 (IJK -> LPS)."""
    if len(coords_kji) < 4:
        return 1.0
    pts = coords_kji[:, ::-1].astype(np.float64) @ np.asarray(voxel_axes_mm, np.float64).T
    ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
    return float(np.sqrt(max(ev[0], 1e-9) / max(ev[1], 1e-9)))


def remove_small_components(labels: np.ndarray, card: ModelCard, voxel_volume_mm3: float,
                            probability: Optional[np.ndarray] = None,
                            voxel_axes_mm: Optional[np.ndarray] = None) -> np.ndarray:
    """Drop components that the card's postprocessing rules out: under the label's minimum volume,
    mean probability under ``min_component_probability``, or (with ``voxel_axes_mm``, the affine's
    3x3) tubular beyond ``max_elongation``."""
    from scipy import ndimage

    pp = card.postprocessing_spec
    use_shape = pp.max_elongation > 0 and voxel_axes_mm is not None
    for lab in card.labels:
        min_vox = max(lab.min_volume_mm3, card.min_lesion_volume_mm3) / voxel_volume_mm3
        if not pp.remove_small_components and pp.min_component_probability == 0 and not use_shape:
            continue
        mask = labels == lab.value
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(mask, comp, idx)
        drop = np.zeros(n + 1, dtype=bool)
        if pp.remove_small_components:
            drop[1:] |= sizes < min_vox
        if probability is not None and pp.min_component_probability > 0:
            drop[1:] |= ndimage.mean(probability, comp, idx) < pp.min_component_probability
        if use_shape:
            for c, sl in enumerate(ndimage.find_objects(comp), start=1):
                if sl is None or drop[c]:
                    continue
                pts = np.argwhere(comp[sl] == c) + np.array([s.start for s in sl])
                drop[c] = component_elongation(pts, voxel_axes_mm) > pp.max_elongation  # type: ignore[arg-type]
        labels[drop[comp] & mask] = 0
    return labels


def standard_pipeline(volume: Volume, runner: NetworkRunner, ctx: RunContext) -> Prediction:
    card = ctx.card
    ctx.info["_runner"] = runner
    ctx.check_cancelled()
    crop_mode = ctx.options.crop or card.crop.mode
    opts = ctx.options
    sw = _sliding_window_spec(card, opts)
    limit = sw.single_window_max_voxels if opts.single_window_max_voxels is None else opts.single_window_max_voxels
    ctx.report("preprocess", 0.0, "resampling to the model grid")
    keep_box = None
    single = False
    with ctx.timed("preprocess"):
        if limit and opts.roi_size is None:
            # one window over the cropped grid, when it is small enough (a card's choice: it gives the
            # network other window borders than tiling does, so other results for a border-sensitive one)
            arr, grid, box = preprocess(volume, card, crop_mode)
            m = sw.size_multiple
            single = int(np.prod([math.ceil(x / m) * m for x in arr.shape])) <= limit
        if not single:
            roi = tuple(int(x) for x in reversed(sw.roi_size))
            ti = preprocess_tiled(volume, card, crop_mode, roi, sw.overlap)
            arr, grid, keep_box, box = ti.array, ti.grid, ti.keep_box, None
            ctx.info.update(crop_box_model_kji=None if keep_box is None else [list(keep_box.lo), list(keep_box.hi)],
                            crop_box_kji=None if ti.source_box is None else [list(ti.source_box.lo), list(ti.source_box.hi)])
        else:
            ctx.info.update(crop_box_kji=None if box is None else [list(box.lo), list(box.hi)])
    ctx.info.update(model_grid_shape_kji=list(grid.shape_kji), model_spacing_mm=[float(x) for x in np.linalg.norm(grid.affine[:3, :3], axis=0)])
    ctx.report("preprocess", 1.0, f"model grid {grid.shape_kji}")
    ctx.check_cancelled()
    with ctx.timed("load_network"):
        net = runner.network(ctx.device)
    with ctx.timed("infer"):
        probs = sliding_window_predict(net, arr, card, ctx, keep_box=keep_box, allow_single=single)
    ctx.info.pop("_runner", None)
    del arr
    ctx.check_cancelled()
    ctx.report("postprocess", 0.0, "resampling back to the source grid")
    with ctx.timed("postprocess"):
        labels, fg = _back_to_source(probs, grid, volume, box, card, ctx.options.return_probabilities)
    ctx.report("postprocess", 1.0, "done")
    return Prediction(labels=volume.with_array(labels), probabilities=None if fg is None else volume.with_array(fg))


def _back_to_source(probs: np.ndarray, grid: geo.Grid, volume: Volume, box: Optional[geo.Box], card: ModelCard,
                    want_probabilities: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Probabilities on the model grid -> label map (and foreground probability) on the full source
    grid. Only the neighbourhoods of model voxels with a non-negligible foreground probability (> 0.02)
    are resampled, one small box per group of them: elsewhere the answer is background (probability
    reported as 0), and resampling a 512x512x300 grid, or the box around scattered specks over both
    lungs, for nothing costs seconds."""
    from scipy import ndimage

    target = volume if box is None else geo.crop_volume(volume, box)
    tgrid = geo.Grid.of(target)
    softmax = card.postprocessing_spec.activation == "softmax"
    fg_model = (1.0 - probs[0]) if softmax else probs.max(axis=0)
    labels_full = np.zeros(volume.array.shape, dtype=np.uint8)
    fg_full = np.zeros(volume.array.shape, dtype=np.float32) if want_probabilities else None
    mask = fg_model > 0.02
    if not mask.any():
        return labels_full, fg_full
    # one box per group of nearby voxels: each component's bounding box grown by 2 voxels (a source
    # voxel interpolates from model voxels at most 1 away), overlapping boxes merged until none
    # overlap, so no box holds another's voxels and a source-grid component never spans two boxes
    comp, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    shape = np.asarray(grid.shape_kji)
    boxes = [(np.maximum(np.array([x.start for x in o]) - 2, 0), np.minimum(np.array([x.stop for x in o]) + 2, shape))
             for o in ndimage.find_objects(comp) if o is not None]
    del comp
    merged = True
    while merged:
        merged = False
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for blo, bhi in boxes:
            for n, (olo, ohi) in enumerate(out):
                if np.all(blo < ohi) and np.all(olo < bhi):
                    out[n] = (np.minimum(blo, olo), np.maximum(bhi, ohi))
                    merged = True
                    break
            else:
                out.append((blo, bhi))
        boxes = out
    if len(boxes) > 100:  # thousands of specks: one box costs less than a resample call per box
        boxes = [(np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0))]
    inv_t = np.linalg.inv(tgrid.affine[:3, :3])
    for lo, hi in boxes:
        # the model-grid sub-box's corners in target indices -> the target index box to fill
        corners = np.array([[a, b, c] for a in (lo[0], hi[0] - 1) for b in (lo[1], hi[1] - 1) for c in (lo[2], hi[2] - 1)], dtype=float)
        lps = corners[:, ::-1] @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        kji = ((lps - tgrid.affine[:3, 3]) @ inv_t.T)[:, ::-1]
        tlo = np.maximum(np.floor(kji.min(axis=0)).astype(int) - 1, 0)
        thi = np.minimum(np.ceil(kji.max(axis=0)).astype(int) + 2, np.asarray(tgrid.shape_kji))
        if not np.all(thi > tlo):
            continue
        sub = geo.crop_volume(target, geo.Box(tuple(int(x) for x in tlo), tuple(int(x) for x in thi)))  # type: ignore[arg-type]
        sgrid = geo.Grid.of(sub)
        mgrid_sub_aff = grid.affine.copy()
        mgrid_sub_aff[:3, 3] = grid.affine[:3, :3] @ lo[::-1] + grid.affine[:3, 3]
        mgrid_sub = geo.Grid(tuple(int(x) for x in (hi - lo)), mgrid_sub_aff)  # type: ignore[arg-type]
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        chans = [np.ascontiguousarray(probs[c][sl], dtype=np.float32) for c in range(probs.shape[0])]
        if softmax and probs.shape[0] == 2:
            back = np.stack([np.zeros(sgrid.shape_kji, np.float32), geo.resample(chans[1], mgrid_sub, sgrid, default=0.0)])
            back[0] = 1.0 - back[1]
        else:
            back = np.stack([geo.resample(ch, mgrid_sub, sgrid, default=1.0 if (c == 0 and softmax) else 0.0)
                             for c, ch in enumerate(chans)])
        lab_sub = probabilities_to_labels(back, card)
        fg_sub = (1.0 - back[0]) if softmax else back.max(axis=0)
        # every foreground component of this box's voxels lies inside it, so components are analysed
        # there, not over the whole series
        lab_sub = remove_small_components(lab_sub, card, volume.voxel_volume_mm3, fg_sub, volume.affine[:3, :3])
        # sub-box of the target -> full source indices; the source boxes of neighbouring model boxes
        # may overlap at their margins (background in both, or ~0), so keep the larger value
        off = np.asarray(box.lo if box is not None else (0, 0, 0)) + tlo
        full_sl = tuple(slice(int(a), int(a + n)) for a, n in zip(off, lab_sub.shape))
        np.maximum(labels_full[full_sl], lab_sub, out=labels_full[full_sl])
        if fg_full is not None:
            np.maximum(fg_full[full_sl], fg_sub, out=fg_full[full_sl])
    return labels_full, fg_full


# --- the four kinds ----------------------------------------------------------------------------------
def _load_state_dict(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a bad file
        raise ModelError(f"cannot read weights {path}: {exc}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"weights {path} do not hold a state_dict (got {type(obj).__name__})")
    return obj


class NativeRunner(NetworkRunner):
    kind = "native"

    def load_network(self) -> torch.nn.Module:
        from .native import import_modules, resolve_network

        s = self.card.runner.settings
        import_modules(s.get("import"))
        factory = resolve_network(s["network"])
        net = factory(**(s.get("kwargs") or {}))
        if self.weights_path is not None:
            try:
                net.load_state_dict(_load_state_dict(self.weights_path), strict=True)
            except RuntimeError as exc:
                raise ModelError(f"{self.card.id}: weights {self.weights_path.name} do not fit network {s['network']}: {str(exc)[:300]}") from None
        return net


class TorchScriptRunner(NetworkRunner):
    kind = "torchscript"

    def load_network(self) -> torch.nn.Module:
        assert self.weights_path is not None
        try:
            return torch.jit.load(str(self.weights_path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"{self.card.id}: {self.weights_path} is not a TorchScript file: {exc}") from None


class BundleRunner(NetworkRunner):
    """A MONAI bundle directory (or a verified zip of one)."""

    kind = "bundle"

    def bundle_dir(self) -> Path:
        s = self.card.runner.settings
        if s.get("bundle_dir"):
            d = Path(s["bundle_dir"])
            if not d.is_absolute() and self.card.path:
                d = Path(self.card.path).parent / d
            return d
        from ..models.weights import extract_archive

        assert self.weights_path is not None and self.card.weights is not None
        return extract_archive(self.weights_path, self.card.weights.sha256)

    def load_network(self) -> torch.nn.Module:
        from monai.bundle import ConfigParser

        d = self.bundle_dir()
        s = self.card.runner.settings
        cfg_file = d / s.get("config", "configs/inference.json")
        if not cfg_file.is_file():
            raise ModelError(f"{self.card.id}: bundle {d} has no {cfg_file.relative_to(d)}")
        meta = next((p for p in (d / "configs" / "metadata.json", d / "metadata.json") if p.is_file()), None)
        if meta is None:
            raise ModelError(f"{self.card.id}: bundle {d} has no configs/metadata.json")
        parser = ConfigParser()
        parser.read_meta(str(meta))
        parser.read_config(str(cfg_file))
        parser["bundle_root"] = str(d)
        ts = d / s.get("torchscript_file", "models/model.ts")
        pt = d / s.get("model_file", "models/model.pt")
        if pt.is_file():
            net = parser.get_parsed_content(s.get("network_key", "network_def"))
            net.load_state_dict(_load_state_dict(pt), strict=True)
        elif ts.is_file():
            net = torch.jit.load(str(ts), map_location="cpu")
        else:
            raise ModelError(f"{self.card.id}: bundle {d} has neither models/model.pt nor models/model.ts")
        self.metadata = json.loads(meta.read_text())
        return net


class ExternalRunner(Runner):
    """Runs ``settings.command`` with NIfTI in and out. Placeholders: ``{python}`` (this interpreter),
    ``{input}``, ``{output}``, ``{weights}`` (verified weights path or ""), ``{device}``. The command
    runs in its own session so cancelling kills its whole process tree."""

    kind = "external"

    def run(self, volume: Volume, ctx: RunContext) -> Prediction:
        import nibabel as nib

        from ..fileio import deferred_durability, save_nifti

        s = self.card.runner.settings
        with tempfile.TemporaryDirectory(prefix="medimgai-ext-") as tmp:
            inp, out = Path(tmp) / "input.nii.gz", Path(tmp) / "output.nii.gz"
            ctx.report("preprocess", 0.0, "writing NIfTI input")
            with ctx.timed("preprocess"):
                with deferred_durability():  # a scratch file: no flush
                    save_nifti(volume.to_nifti(), inp)
            fields = {"python": shlex.quote(sys.executable), "input": shlex.quote(str(inp)), "output": shlex.quote(str(out)),
                      "weights": shlex.quote(str(self.weights_path or "")), "device": ctx.device.type}
            cmd = s["command"].format(**fields)
            env = dict(os.environ, **{k: str(v) for k, v in (s.get("env") or {}).items()})
            timeout = float(s.get("timeout_s", 3600))
            ctx.report("infer", 0.0, "running external command")
            with ctx.timed("infer"):
                rc, err = _run_cancellable(shlex.split(cmd), env, timeout, ctx)
            if rc != 0:
                raise ModelError(f"{self.card.id}: external command exited with status {rc}: {err.strip()[-500:]}")
            if not out.is_file():
                raise ModelError(f"{self.card.id}: external command wrote no output NIfTI at {{output}}")
            ctx.report("infer", 1.0, "external command finished")
            with ctx.timed("postprocess"):
                res = Volume.from_nifti(nib.load(str(out)))
                arr = np.rint(np.asarray(res.array, dtype=np.float32)).astype(np.uint8)
                labels = geo.resample(arr, geo.Grid.of(res), geo.Grid.of(volume), interpolation="nearest", dtype=np.uint8)
                known = {lab.value for lab in self.card.labels} | {0}
                unknown = sorted(set(np.unique(labels).tolist()) - known)
                if unknown:
                    ctx.warnings.append(f"external output holds label values {unknown} that the card does not define; set to 0")
                    labels[np.isin(labels, unknown)] = 0
                labels = remove_small_components(labels, self.card, volume.voxel_volume_mm3, voxel_axes_mm=volume.affine[:3, :3])
        return Prediction(labels=volume.with_array(labels))


def _run_cancellable(argv: list[str], env: dict[str, str], timeout_s: float, ctx: RunContext) -> tuple[int, str]:
    err_file = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_file, env=env, start_new_session=True)
    except OSError as exc:
        raise ModelError(f"{ctx.card.id}: cannot start external command {argv[0]!r}: {exc}") from None
    t0 = time.monotonic()
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if ctx.cancel is not None and ctx.cancel.is_set():
                kill_process_tree(proc)
                raise CancelledError(f"inference with {ctx.card.id} was cancelled")
            if time.monotonic() - t0 > timeout_s:
                kill_process_tree(proc)
                raise ModelError(f"{ctx.card.id}: external command ran longer than {timeout_s:.0f} s and was stopped")
    except BaseException:
        kill_process_tree(proc)
        raise
    err_file.seek(0)
    return rc, err_file.read().decode(errors="replace")


def kill_process_tree(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM then SIGKILL to the process group started with ``start_new_session=True``."""
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # grandchildren may outlive the leader
        except (ProcessLookupError, PermissionError):
            pass
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


RUNNERS: dict[str, type[Runner]] = {
    "bundle": BundleRunner,
    "torchscript": TorchScriptRunner,
    "native": NativeRunner,
    "external": ExternalRunner,
}
