"""The objects that leave the analysis: ``Finding``, ``Category``, ``AnalysisResult``.

``AnalysisResult.to_json()`` is the findings.json contract (schema ``medimgai.findings/1``) that other
tools read; field names carry units (``_mm``, ``_mm3``, ``_hu``) and frames (``_lps``). Measurements
are stored unrounded: a rule rounds exactly as its guideline says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field

FINDINGS_SCHEMA = "medimgai.findings/1"


class Code(BaseModel):
    """A coded concept (SNOMED CT "SCT", DICOM "DCM", RadLex "RADLEX", ...)."""

    value: str
    scheme: str
    meaning: str


class Category(BaseModel):
    system: str  # "Lung-RADS" | "Fleischner" | ...
    version: str  # the rule set's version ("v2022", "2017")
    value: str  # as the guideline prints it: "2", "3", "4A", "4B", "not applicable", ...
    recommendation: str = ""
    follow_up_months: Optional[float] = None
    rule_id: str = ""  # which row of the rule set decided
    codes: list[Code] = Field(default_factory=list)


class Finding(BaseModel):
    id: str  # stable within the result ("F1", "F2", ...)
    label: str  # model label name ("nodule", "Left hippocampus", ...)
    label_value: int = 1  # the model label this finding belongs to (its value in the semantic label map)
    #: this finding's voxels in the instance label map (``outputs.instance_map``): one value per finding
    instance_value: int = 0
    type: str = ""  # "solid" | "part-solid" | "ground-glass" | "" when the model cannot tell
    center_lps_mm: list[float] = Field(default_factory=list)
    volume_mm3: Optional[float] = None
    long_axis_mm: Optional[float] = None
    short_axis_mm: Optional[float] = None
    mean_diameter_mm: Optional[float] = None
    max_3d_diameter_mm: Optional[float] = None
    solid_core_mean_diameter_mm: Optional[float] = None
    mean_hu: Optional[float] = None
    sd_hu: Optional[float] = None
    probability: Optional[float] = None
    #: the k index of the slice the axial measurements were made on (0-based, in the Volume's order)
    slice_index: Optional[int] = None
    #: LPS end points of the long / short axis lines ([[x,y,z],[x,y,z]])
    long_axis_lps_mm: list[list[float]] = Field(default_factory=list)
    short_axis_lps_mm: list[list[float]] = Field(default_factory=list)
    side: str = ""  # "left" | "right" | ""
    location: str = ""  # lobe or region where the model can tell
    juxtapleural: Optional[bool] = None
    perifissural: Optional[bool] = None
    finding_code: Optional[Code] = None
    site_code: Optional[Code] = None
    tracking_uid: str = ""
    categories: list[Category] = Field(default_factory=list)
    #: growth against a matched prior finding, when one exists
    prior: Optional[dict[str, Any]] = None
    status: str = "ai"  # "ai" | "accepted" | "rejected" | "edited"


class ModelRef(BaseModel):
    id: str
    version: str
    weights_sha256: str = ""


class RuleRef(BaseModel):
    id: str
    version: str


class Outputs(BaseModel):
    seg: Optional[str] = None
    sr: Optional[str] = None
    key_images: list[str] = Field(default_factory=list)
    label_map: Optional[str] = None  # semantic label map (model labels), NIfTI, source grid
    instance_map: Optional[str] = None  # one value per finding (Finding.instance_value), NIfTI, source grid
    source_dir: Optional[str] = None  # where the analysed series was read from (for review sessions)


class AnalysisResult(BaseModel):
    schema_: str = Field(default=FINDINGS_SCHEMA, alias="schema")
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    model: Optional[ModelRef] = None
    rules: list[RuleRef] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    study_categories: list[Category] = Field(default_factory=list)
    study_measurements: dict[str, float] = Field(default_factory=dict)
    protocol: Optional[dict[str, Any]] = None
    context: dict[str, Any] = Field(default_factory=dict)
    outputs: Outputs = Field(default_factory=Outputs)
    timings_s: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    model_config = {"populate_by_name": True, "protected_namespaces": ()}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Atomic: written to a temporary name beside the target, then renamed."""
        from .fileio import atomic_output

        path = Path(path)
        with atomic_output(path, "w") as fh:
            json.dump(self.to_json(), fh, indent=2)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "AnalysisResult":
        data = json.loads(Path(path).read_text())
        if data.get("schema") != FINDINGS_SCHEMA:
            from .errors import MedImgAIError

            raise MedImgAIError(f"{path} is not a {FINDINGS_SCHEMA} file (schema={data.get('schema')!r})")
        return cls.model_validate(data)
