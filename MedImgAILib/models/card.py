"""``ModelCard``: the pydantic schema of ``Resources/models/*.yaml``.

A card is documentation and configuration in one: what the model is for and not for, what it expects
(orientation, spacing, intensity handling), what its labels mean (coded), how to run it (runner kind and
settings), where its weights are (URL + sha256 + size + licence) and what it claims (benchmarks).
Every field a user can misspell is checked on load (``extra="forbid"``), so a typo in a card is an error
naming the file and the field, not a silently ignored setting.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

CARD_SCHEMA = "medimgai.model-card/1"

_ORIENTATION_RE = re.compile(r"^(?=.*[LR])(?=.*[PA])(?=.*[SI])[LRPASI]{3}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CodeSpec(_Strict):
    """A coded concept, as DICOM SEG wants it (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: str
    scheme: str  # "SCT" | "DCM" | "RADLEX" | ...
    meaning: str


class LabelSpec(_Strict):
    """One output label of a segmentation model (label-map value -> coded segment)."""

    name: str
    value: int = Field(ge=1, le=255)
    #: SEG SegmentedPropertyCategoryCodeSequence (e.g. SCT 49755003 "Morphologically abnormal structure")
    category: CodeSpec
    #: SEG SegmentedPropertyTypeCodeSequence (e.g. SCT 27925004 "Nodule")
    type: CodeSpec
    #: anatomic region (e.g. SCT 39607008 "Lung") where the label is always there
    anatomic_region: Optional[CodeSpec] = None
    #: display colour, sRGB 0-255
    color_rgb: tuple[int, int, int] = (255, 0, 0)
    #: components smaller than this are dropped by postprocessing (mm3); 0 keeps everything
    min_volume_mm3: float = Field(default=0.0, ge=0)

    @field_validator("color_rgb")
    @classmethod
    def _rgb_range(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(c < 0 or c > 255 for c in v):
            raise ValueError(f"colour components must be 0-255, got {v}")
        return v


class IntensitySpec(_Strict):
    """How stored values become network input. ``window``: clip to [lower, upper] then scale to [0, 1]
    (CT, HU). ``zscore``: (x - mean) / std over the foreground (MR). ``none``: as stored."""

    mode: Literal["window", "zscore", "none"] = "none"
    lower: Optional[float] = None
    upper: Optional[float] = None

    @model_validator(mode="after")
    def _window_bounds(self) -> "IntensitySpec":
        if self.mode == "window":
            if self.lower is None or self.upper is None or not self.lower < self.upper:
                raise ValueError("intensity mode 'window' needs lower < upper (e.g. HU -1000 and 400)")
        return self


class CropSpec(_Strict):
    """Optional crop before the network sees the volume, to cut work. ``body``: the patient (CT voxels
    above ``body_threshold_hu``); ``lungs``: the air inside the body (CT). The crop box is grown by
    ``margin_mm``; the result is pasted back into the full source grid, so the output never shrinks."""

    mode: Literal["none", "body", "lungs"] = "none"
    margin_mm: float = Field(default=10.0, ge=0)
    body_threshold_hu: float = -500.0
    lung_threshold_hu: float = -400.0


class InputSpec(_Strict):
    #: axis codes of the grid the network sees, DICOM style: "LPS" means +i -> left, +j -> posterior,
    #: +k -> superior. Oblique series are resampled onto this axis-aligned grid.
    orientation: str = "LPS"
    #: (i, j, k) spacing in mm the network was trained at; None keeps the source spacing
    target_spacing_mm: Optional[tuple[float, float, float]] = None
    intensity: IntensitySpec = Field(default_factory=IntensitySpec)
    channels: int = Field(default=1, ge=1)
    modality: Optional[str] = None  # "CT" | "MR": the series modality the model accepts

    @field_validator("orientation")
    @classmethod
    def _orientation_code(cls, v: str) -> str:
        v = v.upper()
        if not _ORIENTATION_RE.match(v):
            raise ValueError(f"orientation must be three of L/R, P/A, S/I, one of each, e.g. 'LPS' or 'RAS'; got {v!r}")
        return v

    @field_validator("target_spacing_mm")
    @classmethod
    def _positive(cls, v: Optional[tuple[float, float, float]]) -> Optional[tuple[float, float, float]]:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"target spacing must be positive, got {v}")
        return v


class SlidingWindowSpec(_Strict):
    roi_size: tuple[int, int, int] = (96, 96, 96)  # (i, j, k) voxels of the model grid
    overlap: float = Field(default=0.25, ge=0, lt=1)
    sw_batch_size: int = Field(default=1, ge=1)
    mode: Literal["constant", "gaussian"] = "gaussian"
    #: when the whole model grid (padded to ``size_multiple``) has at most this many voxels, run it as
    #: one window: no overlap recomputation and no seams. 0 always tiles with ``roi_size``.
    single_window_max_voxels: int = Field(default=0, ge=0)
    #: window sizes must be multiples of this (2 ** number of poolings of the network)
    size_multiple: int = Field(default=16, ge=1)


class PostprocessingSpec(_Strict):
    #: "softmax": multi-class logits, argmax; "sigmoid": one channel per label, threshold
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: keep components whose volume >= each label's ``min_volume_mm3``
    remove_small_components: bool = True
    #: keep only components whose mean probability of their label exceeds this (0 keeps all)
    min_component_probability: float = Field(default=0.0, ge=0, lt=1)
    #: drop tubular components (vessels, airway walls): those whose elongation, sqrt(largest / second
    #: largest eigenvalue of the covariance of their voxel positions in mm), exceeds this (0 keeps all)
    max_elongation: float = Field(default=0.0, ge=0)


class RunnerSpec(_Strict):
    """How the model runs. ``settings`` depend on ``kind``:

    - ``bundle``: ``{bundle_dir?: path, network_key?: "network_def", model_file?: "models/model.pt"}``;
      without ``bundle_dir`` the weights file is a zip of the bundle.
    - ``torchscript``: the weights file is a ``torch.jit`` archive.
    - ``native``: ``{network: registered name or "package.module:Class", kwargs: {...}}``; the weights
      file is a state_dict.
    - ``external``: ``{command: "{python} -m pkg {input} {output}", timeout_s?: 3600, env?: {...}}``
      with NIfTI in and NIfTI out.
    """

    kind: Literal["bundle", "torchscript", "native", "external"]
    settings: dict[str, Any] = Field(default_factory=dict)
    sliding_window: SlidingWindowSpec = Field(default_factory=SlidingWindowSpec)
    #: preferred precision on a GPU (autocast); CPUs stay float32 unless ``cpu_bf16`` is true
    amp: bool = True
    cpu_bf16: bool = False

    @model_validator(mode="after")
    def _settings_for_kind(self) -> "RunnerSpec":
        if self.kind == "native" and not self.settings.get("network"):
            raise ValueError("runner kind 'native' needs settings.network (a registered name or 'module:Class')")
        if self.kind == "external" and not self.settings.get("command"):
            raise ValueError("runner kind 'external' needs settings.command, e.g. '{python} -m pkg {input} {output}'")
        return self


class WeightsSpec(_Strict):
    """Where the weights come from. ``url`` is ``https://...``, ``http://...``, ``file:///abs/path`` or
    ``file:relative/path`` (relative to the card's directory: weights committed beside the card)."""

    url: str
    sha256: str
    size_bytes: int = Field(gt=0)
    licence: str
    filename: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("sha256 must be 64 hexadecimal digits")
        return v

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in ("", ".", ".."):
            raise ValueError(f"filename must be a plain file name, got {v!r}")
        return v


class BenchmarkClaim(_Strict):
    dataset: str
    metric: str
    value: float
    unit: str = ""
    stratum: str = ""  # e.g. "slice thickness 5 mm", "" for overall
    n_cases: Optional[int] = None
    command: str = ""  # the command that produced it


class ChangelogEntry(_Strict):
    version: str
    date: date
    change: str


class ModelCard(_Strict):
    schema_: str = Field(default=CARD_SCHEMA, alias="schema")
    id: str
    version: str
    name: str
    task: Literal["segmentation", "detection"]
    modality: str  # "CT" | "MR" | ...
    body_region: CodeSpec
    source: str  # paper / training command / upstream project
    effective: date
    intended_use: str
    limitations: list[str] = Field(min_length=1)
    not_for_clinical_use: bool = True
    input: InputSpec
    labels: list[LabelSpec] = Field(min_length=1)
    runner: RunnerSpec
    weights: Optional[WeightsSpec] = None
    benchmarks: list[BenchmarkClaim] = Field(default_factory=list)
    preprocessing: list[str] = Field(default_factory=list)  # human-readable, in order
    postprocessing_spec: PostprocessingSpec = Field(default_factory=PostprocessingSpec, alias="postprocessing")
    postprocessing_notes: list[str] = Field(default_factory=list)
    crop: CropSpec = Field(default_factory=CropSpec)
    #: protocol ids (Resources/protocols) whose series this model was validated on
    required_protocols: list[str] = Field(default_factory=list)
    #: findings smaller than this are not reported (mm3)
    min_lesion_volume_mm3: float = Field(default=0.0, ge=0)
    training: dict[str, Any] = Field(default_factory=dict)
    changelog: list[ChangelogEntry] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    #: the YAML file the card was read from (``file:`` weights resolve against its directory)
    _path: Optional[Any] = PrivateAttr(default=None)

    @property
    def path(self):
        return self._path

    @field_validator("id")
    @classmethod
    def _id_slug(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", v):
            raise ValueError(f"id must be lower-case letters, digits, '.', '_' or '-', got {v!r}")
        return v

    @model_validator(mode="after")
    def _labels_unique(self) -> "ModelCard":
        values = [lab.value for lab in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {values}")
        names = [lab.name for lab in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        if self.runner.kind != "external" and self.weights is None and not self.runner.settings.get("bundle_dir"):
            raise ValueError(f"runner kind {self.runner.kind!r} needs a 'weights' section")
        return self

    # --- derived ----------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Output channels for softmax models: background + the highest label value."""
        return max(lab.value for lab in self.labels) + 1

    def label_by_value(self, value: int) -> LabelSpec:
        for lab in self.labels:
            if lab.value == value:
                return lab
        raise KeyError(value)

    def summary(self) -> dict[str, Any]:
        """What ``models list --json`` prints per model."""
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "task": self.task,
            "modality": self.modality,
            "body_region": self.body_region.meaning,
            "runner": self.runner.kind,
            "labels": [lab.name for lab in self.labels],
            "weights_sha256": self.weights.sha256 if self.weights else "",
            "weights_size_bytes": self.weights.size_bytes if self.weights else 0,
            "licence": self.weights.licence if self.weights else "",
            "not_for_clinical_use": self.not_for_clinical_use,
            "required_protocols": list(self.required_protocols),
        }
