"""The inference engine: card -> weights -> runner -> device -> outputs on the source grid, with timings.

``run_model`` is what the CLI, the worker and the pipeline call; ``load_input`` reads a DICOM series
folder or an image file (NIfTI, NRRD, MHA) into a ``Volume``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import DicomInputError, ModelError
from ..models.card import ModelCard
from ..models.registry import get_card
from ..models.weights import resolve_weights
from ..volume import Volume
from .device import describe, select_device
from .runners import RUNNERS, Prediction, ProgressCallback, RunContext, RunOptions, Runner

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = "medimgai.inference/1"

_RUNNER_CACHE: dict[tuple[str, str, str], Runner] = {}


def make_runner(card: ModelCard, *, weights_dir: str | os.PathLike[str] | None = None, offline: Optional[bool] = None,
                show_progress: bool = False) -> Runner:
    """The runner for ``card`` with verified weights; cached per (model, version, weights)."""
    weights = None
    if card.weights is not None and not card.runner.settings.get("bundle_dir"):
        weights = resolve_weights(card, weights_dir=weights_dir, offline=offline, show_progress=show_progress)
    key = (card.id, card.version, str(weights))
    runner = _RUNNER_CACHE.get(key)
    if runner is None:
        runner = RUNNERS[card.runner.kind](card, weights)
        _RUNNER_CACHE[key] = runner
    return runner


@dataclass
class InferenceResult:
    card: ModelCard
    prediction: Prediction
    device: str
    timings_s: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> Volume:
        return self.prediction.labels

    def label_stats(self) -> list[dict[str, Any]]:
        from scipy import ndimage

        arr = self.labels.array
        nz = [np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        if all(len(x) for x in nz):  # components are counted inside the bounding box of the labels
            arr = arr[tuple(slice(int(x[0]), int(x[-1]) + 1) for x in nz)]
        out = []
        for lab in self.card.labels:
            mask = arr == lab.value
            _, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
            out.append({"name": lab.name, "value": lab.value, "voxels": int(mask.sum()),
                        "volume_mm3": float(mask.sum() * self.labels.voxel_volume_mm3), "components": int(n)})
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "schema": SUMMARY_SCHEMA,
            "model": {"id": self.card.id, "version": self.card.version,
                      "weights_sha256": self.card.weights.sha256 if self.card.weights else ""},
            "runner": self.card.runner.kind,
            "device": self.device,
            "series_instance_uid": self.labels.series_instance_uid,
            "source_shape_ijk": list(self.labels.shape_ijk),
            "source_spacing_mm": list(self.labels.spacing),
            "labels": self.label_stats(),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "info": {k: v for k, v in self.info.items() if not k.startswith("_")},
            "warnings": list(self.warnings),
            "not_for_clinical_use": self.card.not_for_clinical_use,
        }

    def write(self, out_dir: str | os.PathLike[str], *, probabilities: bool = False) -> dict[str, Path]:
        """``labels.nii.gz`` (+ ``probabilities.nii.gz``) and ``inference.json``, each written to a
        temporary name and renamed (inference.json last: it names the maps)."""
        from ..fileio import atomic_output, save_nifti

        out = Path(out_dir)
        paths: dict[str, Path] = {"labels": save_nifti(self.labels.to_nifti(), out / "labels.nii.gz")}
        if probabilities and self.prediction.probabilities is not None:
            paths["probabilities"] = save_nifti(self.prediction.probabilities.to_nifti(), out / "probabilities.nii.gz")
        summary = self.summary()
        summary["outputs"] = {k: v.name for k, v in paths.items()}
        with atomic_output(out / "inference.json", "w") as fh:
            fh.write(json.dumps(summary, indent=2))
        paths["summary"] = out / "inference.json"
        return paths


def run_model(
    model: str | ModelCard,
    volume: Volume,
    *,
    device: Optional[str] = None,
    weights_dir: str | os.PathLike[str] | None = None,
    offline: Optional[bool] = None,
    options: Optional[RunOptions] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[threading.Event] = None,
    runner: Optional[Runner] = None,
) -> InferenceResult:
    """Run a model on a volume; outputs lie on ``volume``'s grid. ``runner`` replaces the card's
    (evaluation of candidate weights, benchmarks)."""
    t0 = time.perf_counter()
    card = model if isinstance(model, ModelCard) else get_card(model)
    if card.input.modality and volume.modality and volume.modality.upper() != card.input.modality.upper():
        raise ModelError(f"model {card.id} expects {card.input.modality} series, this one is {volume.modality}")
    dev = select_device(device)
    opts = options or RunOptions()
    prev_threads = torch.get_num_threads()
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    ctx = RunContext(card=card, device=dev, options=opts, progress=progress, cancel=cancel)
    try:
        if runner is None:
            with ctx.timed("load_weights"):
                runner = make_runner(card, weights_dir=weights_dir, offline=offline)
        ctx.check_cancelled()
        prediction = runner.run(volume, ctx)
    finally:
        if opts.num_threads:
            torch.set_num_threads(prev_threads)
    if prediction.labels.array.shape != volume.array.shape or not np.allclose(prediction.labels.affine, volume.affine):
        # a label map that does not line up with its series is a bug, never an output
        raise ModelError(f"{card.id}: runner {card.runner.kind} returned a label map off the source grid")
    ctx.timings_s["total"] = time.perf_counter() - t0
    ctx.info.pop("_runner", None)
    return InferenceResult(card=card, prediction=prediction, device=describe(torch.device(ctx.info.get("device", str(dev)))),
                           timings_s=ctx.timings_s, info=ctx.info, warnings=ctx.warnings + list(volume.warnings))


# --- input -------------------------------------------------------------------------------------------
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def load_input(path: str | os.PathLike[str], series_uid: Optional[str] = None) -> Volume:
    """A DICOM series folder (via ``MedImgAILib.dicom`` when present, else SimpleITK's series reader)
    or an image file."""
    p = Path(path)
    if not p.exists():
        raise DicomInputError(f"input {p} does not exist")
    if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES):
        return _load_image_file(p)
    try:
        from ..dicom import load_volume  # type: ignore[attr-defined]
    except ImportError:
        load_volume = None
    if load_volume is not None:
        return load_volume(p, series_uid)
    return _load_dicom_sitk(p)


def _load_image_file(p: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise DicomInputError(f"cannot read image {p}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if img.GetDimension() != 3:
        raise DicomInputError(f"image {p} has {img.GetDimension()} dimensions; a 3D image is needed")
    modality = ""
    try:
        modality = img.GetMetaData("modality") if img.HasMetaDataKey("modality") else ""
    except RuntimeError:
        pass
    vol = Volume.from_sitk(img, modality=modality)
    if not vol.modality and vol.array.min() < -500:  # HU below -500 only occur in CT
        vol.modality = "CT"
    return vol


def _load_dicom_sitk(p: Path) -> Volume:
    import pydicom
    import SimpleITK as sitk

    d = p if p.is_dir() else p.parent
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(d))
    if not ids:
        raise DicomInputError(f"no DICOM series found in {d}")
    if len(ids) > 1:
        raise DicomInputError(f"{d} holds {len(ids)} series; point at one series folder")
    files = reader.GetGDCMSeriesFileNames(str(d), ids[0])
    reader.SetFileNames(files)
    img = reader.Execute()
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Volume.from_sitk(img, modality=str(getattr(ds, "Modality", "")), series_instance_uid=str(ids[0]),
                            study_instance_uid=str(getattr(ds, "StudyInstanceUID", "")))
