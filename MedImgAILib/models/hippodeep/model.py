"""``HippodeepModel``: the card ``mr-hippocampus``, its three weight files, the device, the input and
output checks, and the result as ``results.AnalysisResult`` (findings.json).

Weights are found, in order: an explicit directory or ``MEDIMGAI_WEIGHTS_DIR`` (the offline path: a
folder holding the three files under their card file names; tests and CI point it at
``shared/models/hippodeep``), the cache (``MEDIMGAI_CACHE``, default ``~/.cache/medimgai``, under
``weights/mr-hippocampus/<version>/``), then the card's public URL, downloaded with progress unless
``MEDIMGAI_OFFLINE=1``. A file whose sha256 differs from the card's is never used.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import yaml

from ...errors import ContentError, WeightsError
from ...fileio import parse_yaml
from ...resources import resource_path
from ...results import AnalysisResult, Code, Finding, ModelRef
from ...volume import Volume
from .checks import check_head, check_input, check_output, check_registration
from .pipeline import BINARY_THRESHOLD, HippodeepPipeline, HippodeepResult, ProgressFn

log = logging.getLogger(__name__)

CARD_ID = "mr-hippocampus"
ROLES = ("head", "affine", "hippocampus")

HIPPOCAMPUS = Code(value="5366008", scheme="SCT", meaning="Hippocampus")
BRAIN = Code(value="12738006", scheme="SCT", meaning="Brain")
LEFT = Code(value="7771000", scheme="SCT", meaning="Left")
RIGHT = Code(value="24028007", scheme="SCT", meaning="Right")

#: study_measurements keys (findings.json), all unrounded; volumes in mm3, fractions dimensionless
MEASUREMENT_KEYS = (
    "etiv_mm3",
    "cerebrum_mm3",
    "hippocampus_left_mm3",
    "hippocampus_right_mm3",
    "hippocampal_fraction_of_etiv",
    "hippocampal_asymmetry_index",
)


# --------------------------------------------------------------------------------------------------
# Card and weights
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFile:
    role: str
    url: str
    sha256: str
    size_bytes: int
    licence: str
    filename: str


def card_path() -> Path:
    return resource_path("models", f"{CARD_ID}.yaml")


def load_card_data(path: Optional[Path] = None) -> dict[str, Any]:
    """The card as a dict. (The registry's pydantic ``ModelCard`` validates the same file.)"""
    p = path or card_path()
    try:
        data = parse_yaml(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ContentError(f"model card {p} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("id") != CARD_ID:
        raise ContentError(f"{p} is not the {CARD_ID} model card")
    return data


def weight_files(card: dict[str, Any]) -> dict[str, WeightFile]:
    try:
        entries = card["runner"]["settings"]["weights_files"]
        files = {e["role"]: WeightFile(**e) for e in entries}
    except (KeyError, TypeError) as exc:
        raise ContentError(f"model card {CARD_ID}: runner.settings.weights_files is malformed ({exc})") from exc
    missing = [r for r in ROLES if r not in files]
    if missing:
        raise ContentError(f"model card {CARD_ID}: runner.settings.weights_files lacks roles {missing}")
    return files


def resolve_weight_files(
    card: dict[str, Any],
    weights_dir: Optional[str | os.PathLike[str]] = None,
    *,
    offline: Optional[bool] = None,
    show_progress: bool = False,
) -> dict[str, Path]:
    """role -> a local, sha256-checked file, through the registry's resolver (directory, cache,
    download; one file per call, the card's ``weights`` swapped for each of the three)."""
    from ..card import ModelCard, WeightsSpec
    from ..weights import resolve_weights

    model_card = ModelCard.model_validate(card)
    out = {}
    for role, wf in weight_files(card).items():
        spec = WeightsSpec(url=wf.url, sha256=wf.sha256, size_bytes=wf.size_bytes, licence=wf.licence, filename=wf.filename)
        out[role] = Path(resolve_weights(model_card.model_copy(update={"weights": spec}), weights_dir=weights_dir,
                                         offline=offline, show_progress=show_progress))
    return out


def load_state_dict(path: Path, role: str) -> dict[str, torch.Tensor]:
    """The published files use torch's legacy serialisation and two were saved on a GPU: load on the
    CPU, tensors only (``weights_only=True`` needs no arbitrary unpickling)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} ({role} network of {CARD_ID}) is not a readable state_dict: {exc}") from exc
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} ({role} network of {CARD_ID}) holds a {type(sd).__name__}, not a state_dict")
    return sd


# --------------------------------------------------------------------------------------------------
# Device and threads
# --------------------------------------------------------------------------------------------------
def select_device(name: str = "auto") -> torch.device:
    """The engine's device choice (``auto``: CUDA, then Apple MPS, then CPU)."""
    from ...inference.device import select_device as engine_select_device

    return engine_select_device(name)


def default_threads() -> int:
    """The CPUs this process may run on (affinity / container aware), as torch would use them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _numerics(device: torch.device, threads: Optional[int]) -> Iterator[None]:
    """float32 as published: no TF32 on CUDA; the thread count only for the call, then restored."""
    old_threads = torch.get_num_threads()
    old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class HippodeepModel:
    """Load once, ``analyze`` many volumes."""

    def __init__(self, pipeline: HippodeepPipeline, card: dict[str, Any], weights_sha256: dict[str, str],
                 threads: Optional[int] = None) -> None:
        self.pipeline = pipeline
        self.card = card
        self.weights_sha256 = weights_sha256
        self.threads = threads

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def version(self) -> str:
        return str(self.card.get("version", ""))

    @classmethod
    def load(
        cls,
        weights_dir: Optional[str | os.PathLike[str]] = None,
        device: str = "auto",
        threads: Optional[int] = None,
        *,
        offline: Optional[bool] = None,
        show_progress: bool = False,
        card_file: Optional[Path] = None,
    ) -> "HippodeepModel":
        card = load_card_data(card_file)
        paths = resolve_weight_files(card, weights_dir, offline=offline, show_progress=show_progress)
        files = weight_files(card)
        sds = {role: load_state_dict(paths[role], role) for role in ROLES}
        dev = select_device(device)
        try:
            pipe = HippodeepPipeline.from_state_dicts(sds["head"], sds["affine"], sds["hippocampus"], dev)
        except RuntimeError as exc:  # missing / unexpected keys or shapes
            raise WeightsError(f"the {CARD_ID} weight files do not fit the networks: {exc}") from exc
        return cls(pipe, card, {r: files[r].sha256 for r in ROLES}, threads or default_threads())

    def analyze(self, volume: Volume, progress: Optional[ProgressFn] = None, check: bool = True) -> HippodeepResult:
        """Run on a T1 ``Volume``; refuses non-T1 / non-head input (``UnsupportedInputError``)."""
        warnings = check_input(volume) if check else []
        with _numerics(self.device, self.threads):
            result = self.pipeline.run(
                volume,
                progress=progress,
                check_head=(lambda etiv, cer: check_head(etiv, cer, volume)) if check else None,
                check_registration=(lambda m: check_registration(m, volume)) if check else None,
            )
        if check:
            warnings += check_output(result, volume)
        result.warnings.extend(warnings)
        return result

    # --- findings.json ----------------------------------------------------------------------------
    def to_analysis_result(self, result: HippodeepResult) -> AnalysisResult:
        src = result.source
        findings = []
        for fid, (label, value, side, mm3, soft, lat) in enumerate(
            (
                ("Left hippocampus", 1, "left", result.hippocampus_left_mm3, result.hippocampus_left_soft, LEFT),
                ("Right hippocampus", 2, "right", result.hippocampus_right_mm3, result.hippocampus_right_soft, RIGHT),
            ),
            start=1,
        ):
            mask = soft >= BINARY_THRESHOLD
            center: list[float] = []
            key_slice = None
            if mask.any():
                kji = np.argwhere(mask).mean(0)
                center = [float(x) for x in src.ijk_to_lps(kji[::-1])]
                # the k slice with the largest cross-section: where key images show this finding
                key_slice = int(mask.reshape(mask.shape[0], -1).sum(1).argmax())
            findings.append(
                Finding(
                    id=f"F{fid}",
                    label=label,
                    label_value=value,
                    instance_value=value,  # its voxels in ``result.label_map()`` (the instance map)
                    side=side,
                    volume_mm3=mm3,
                    center_lps_mm=center,
                    slice_index=key_slice,
                    location=f"{lat.meaning} hippocampus",
                    finding_code=HIPPOCAMPUS,
                    site_code=BRAIN,
                )
            )
        measurements = {
            "etiv_mm3": result.etiv_mm3,
            "cerebrum_mm3": result.cerebrum_mm3,
            "hippocampus_left_mm3": result.hippocampus_left_mm3,
            "hippocampus_right_mm3": result.hippocampus_right_mm3,
            "hippocampal_fraction_of_etiv": result.hippocampal_fraction_of_etiv,
            "hippocampal_asymmetry_index": result.asymmetry_index,
        }
        context = {
            "method": "hippodeep (Thyreau et al. 2018), reimplemented; upstream commit 310305f",
            "voxel_volume_mm3": result.voxel_volume_mm3,
            "hippocampus_volume_definition": "sum of the soft mask (values < 32/255 dropped) / 255 x voxel volume",
            "hippocampus_mask_threshold": f"uint8 soft mask >= {BINARY_THRESHOLD} (50 % level after the remap)",
            "hippocampus_left_binary_mm3": float(result.hippocampus_left_mask().sum()) * result.voxel_volume_mm3,
            "hippocampus_right_binary_mm3": float(result.hippocampus_right_mask().sum()) * result.voxel_volume_mm3,
            "asymmetry_index_definition": "(left - right) / ((left + right) / 2)",
            "weights_sha256": dict(self.weights_sha256),
            "device": str(self.device),
            "native_ras_to_mni": result.native_ras_to_mni.tolist(),
        }
        return AnalysisResult(
            study_instance_uid=src.study_instance_uid,
            series_instance_uid=src.series_instance_uid,
            model=ModelRef(id=CARD_ID, version=self.version, weights_sha256=self.weights_sha256["hippocampus"]),
            findings=findings,
            study_measurements=measurements,
            context=context,
            timings_s=dict(result.timings_s),
            warnings=list(result.warnings),
        )


def analyze_file(path: str | os.PathLike[str], model: Optional[HippodeepModel] = None,
                 series_instance_uid: Optional[str] = None, **load_kw: Any) -> tuple[HippodeepResult, AnalysisResult]:
    """NIfTI file or DICOM series -> (result with masks, findings.json object)."""
    from .inputs import load_t1

    volume = load_t1(path, series_instance_uid)
    model = model or HippodeepModel.load(**load_kw)
    result = model.analyze(volume)
    return result, model.to_analysis_result(result)

