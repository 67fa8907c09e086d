"""What a phantom case is made of: the patient (anatomy seed, nodules), the acquisition (scanner,
dose, reconstruction) and the header context (protocol, indication). Everything is plain data
(pydantic), so a spec round-trips through truth.json and a sweep can vary one field at a time.

Units are in the field names: ``_mm``, ``_hu``, ``_kvp``, ``_ma``. Positions are DICOM patient LPS mm
in the phantom's own frame: x = 0 is the mid-sagittal plane, y = 0 the centre of the chest's
cross-section, z = 0 about the level of the carina (superior is +z).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import MedImgAIError

NoduleType = Literal["solid", "part_solid", "ground_glass"]
NoduleShape = Literal["sphere", "ellipsoid", "lobulated"]
KernelFamily = Literal["soft", "standard", "sharp"]


class PhantomSpecError(MedImgAIError):
    """A phantom specification that cannot be built (nodule outside the lungs, impossible size...)."""

    kind = "phantom-spec"


class NoduleSpec(BaseModel):
    """One nodule. ``center_lps_mm`` None: placed at random inside a lung (seeded)."""

    model_config = ConfigDict(extra="forbid")

    type: NoduleType = "solid"
    #: nominal diameter of the whole nodule (ground-glass halo included), mm. For an ellipsoid the
    #: geometric mean of its three axes; for a lobulated nodule the diameter of its central sphere.
    diameter_mm: float = Field(8.0, gt=0.5, le=60.0)
    #: part-solid only: diameter of the solid core (default: 40 % of ``diameter_mm``)
    solid_core_diameter_mm: Optional[float] = Field(None, gt=0.0)
    center_lps_mm: Optional[tuple[float, float, float]] = None
    shape: NoduleShape = "sphere"
    #: ellipsoid only: axis ratios (normalised to geometric mean 1 internally) and orientation
    axis_ratios: tuple[float, float, float] = (1.4, 1.0, 0.75)
    euler_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: attached to the costal pleura: its centre sits ~0.3 diameters inside the lung surface and the
    #: part that would lie in the chest wall is cut away (the nodule is nodule ∩ lung)
    juxtapleural: bool = False
    #: on a fissure (oblique, or the right horizontal one): a lentiform nodule flattened across the
    #: fissure (semi-axes 1.3 r, 1.3 r, 0.6 r), centred on the sheet; ``shape`` is then ignored
    perifissural: bool = False
    #: "right" / "left" or None (random, weighted by lung volume)
    side: Optional[Literal["right", "left"]] = None
    #: attenuation override; None = type default (solid 35, ground-glass -620, part-solid halo -600 /
    #: core 35), each jittered a little per nodule
    hu: Optional[float] = None
    core_hu: Optional[float] = None

    @model_validator(mode="after")
    def _check(self) -> "NoduleSpec":
        if self.type == "part_solid":
            core = self.solid_core_diameter_mm
            if core is not None and core >= self.diameter_mm:
                raise ValueError(
                    f"part-solid nodule: solid core {core} mm must be smaller than the nodule {self.diameter_mm} mm"
                )
        if any(r <= 0 for r in self.axis_ratios):
            raise ValueError("axis_ratios must be positive")
        if self.perifissural and self.juxtapleural:
            raise ValueError("a nodule is either juxtapleural (costal pleura) or perifissural, not both")
        return self


class RandomNodules(BaseModel):
    """Random nodules sampled with the case seed (positions, sizes, types, shapes)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(3, ge=0, le=50)
    diameter_range_mm: tuple[float, float] = (4.0, 20.0)
    types: list[NoduleType] = ["solid", "solid", "part_solid", "ground_glass"]
    shapes: list[NoduleShape] = ["sphere", "sphere", "ellipsoid", "lobulated"]
    juxtapleural_fraction: float = Field(0.2, ge=0.0, le=1.0)
    perifissural_fraction: float = Field(0.0, ge=0.0, le=1.0)


#: manufacturer -> (model name, kernel names for soft / standard / sharp)
SCANNERS: dict[str, tuple[str, dict[str, str]]] = {
    "GE MEDICAL SYSTEMS": ("Revolution CT", {"soft": "SOFT", "standard": "STANDARD", "sharp": "LUNG"}),
    "SIEMENS": ("SOMATOM Definition AS", {"soft": "B30f", "standard": "B40f", "sharp": "B70f"}),
    "Philips": ("iCT 256", {"soft": "B", "standard": "C", "sharp": "L"}),
    "TOSHIBA": ("Aquilion ONE", {"soft": "FC13", "standard": "FC18", "sharp": "FC52"}),
}


class AcquisitionSpec(BaseModel):
    """Scanner, dose and reconstruction. Changing these never changes the patient (anatomy, nodules)."""

    model_config = ConfigDict(extra="forbid")

    slice_thickness_mm: float = Field(1.25, ge=0.5, le=10.0)
    #: distance between reconstructed slice centres; None = slice thickness (contiguous)
    reconstruction_interval_mm: Optional[float] = Field(None, gt=0.1, le=20.0)
    #: in-plane pixel spacing; None = fov_mm / matrix
    pixel_spacing_mm: Optional[float] = Field(None, gt=0.1, le=5.0)
    fov_mm: float = Field(380.0, ge=50.0, le=700.0)
    matrix: int = Field(512, ge=16, le=1024)
    #: number of slices; None = enough to cover both lungs with ``z_margin_mm`` above and below
    slices: Optional[int] = Field(None, ge=1, le=2000)
    #: LPS z of the first (most inferior) slice centre; None = centred on the lungs
    z_start_mm: Optional[float] = None
    z_margin_mm: float = 15.0
    #: reconstruction centre in the phantom frame (x, y)
    center_xy_mm: tuple[float, float] = (0.0, 0.0)
    kernel: KernelFamily = "soft"
    #: DICOM ConvolutionKernel text; None = the manufacturer's name for ``kernel``
    kernel_name: Optional[str] = None
    #: in-plane Gaussian PSF sigma, mm; None = kernel default (soft 0.55, standard 0.45, sharp 0.30)
    blur_sigma_mm: Optional[float] = Field(None, ge=0.0, le=5.0)
    #: unsharp-mask gain for edge enhancement; None = kernel default (sharp 0.6, others 0)
    edge_enhancement: Optional[float] = Field(None, ge=0.0, le=3.0)
    #: noise SD in HU in a homogeneous region; None = derived from dose, kVp, thickness and kernel
    noise_sd_hu: Optional[float] = Field(None, ge=0.0, le=500.0)
    #: None = noise passes through the reconstruction kernel (texture follows the kernel); a number =
    #: white noise smoothed by a Gaussian of this sigma (mm), independent of the kernel; 0 = white
    noise_correlation_mm: Optional[float] = Field(None, ge=0.0, le=5.0)
    kvp: float = Field(120.0, ge=60.0, le=150.0)
    tube_current_ma: float = Field(200.0, gt=0.0, le=1500.0)
    rotation_time_s: float = Field(0.5, gt=0.1, le=3.0)
    pitch: float = Field(1.0, gt=0.1, le=3.0)
    #: CTDIvol header value; None = derived from mAs and kVp (32 cm body phantom)
    ctdi_vol_mgy: Optional[float] = Field(None, ge=0.0, le=200.0)
    contrast: Literal["none", "venous", "arterial"] = "none"
    manufacturer: str = "GE MEDICAL SYSTEMS"
    model_name: Optional[str] = None
    station_name: str = "PHANTOM01"
    software_versions: str = "medimgai-phantom 1"
    table: bool = True
    gantry_tilt_deg: Literal[0] = 0
    #: breathing artefact: peak craniocaudal displacement of the anatomy (mm) while the table moves
    #: ``breathing_period_mm`` per breath; 0 = a perfect breath-hold. Truth keeps the static
    #: geometry; image and label map show the displaced (stair-stepped, doubled or missed) anatomy.
    breathing_motion_mm: float = Field(0.0, ge=0.0, le=30.0)
    breathing_period_mm: float = Field(40.0, gt=1.0, le=1000.0)
    breathing_phase: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "AcquisitionSpec":
        if self.pixel_spacing_mm is not None and self.pixel_spacing_mm * self.matrix > 1000:
            raise ValueError("pixel_spacing_mm * matrix exceeds 1000 mm")
        return self

    # --- derived values ----------------------------------------------------------------------------
    @property
    def spacing_mm(self) -> float:
        return float(self.pixel_spacing_mm) if self.pixel_spacing_mm else self.fov_mm / self.matrix

    @property
    def interval_mm(self) -> float:
        return float(self.reconstruction_interval_mm or self.slice_thickness_mm)

    @property
    def effective_mas(self) -> float:
        return self.tube_current_ma * self.rotation_time_s / self.pitch

    @property
    def ctdi_vol(self) -> float:
        """CTDIvol (32 cm phantom): ~0.075 mGy per effective mAs at 120 kVp, scaling ~kVp^2.5."""
        if self.ctdi_vol_mgy is not None:
            return float(self.ctdi_vol_mgy)
        return 0.075 * self.effective_mas * (self.kvp / 120.0) ** 2.5

    @property
    def blur_sigma(self) -> float:
        if self.blur_sigma_mm is not None:
            return float(self.blur_sigma_mm)
        return {"soft": 0.55, "standard": 0.45, "sharp": 0.30}[self.kernel]

    @property
    def edge_gain(self) -> float:
        if self.edge_enhancement is not None:
            return float(self.edge_enhancement)
        return {"soft": 0.0, "standard": 0.15, "sharp": 0.6}[self.kernel]

    @property
    def noise_corr(self) -> float | None:
        return None if self.noise_correlation_mm is None else float(self.noise_correlation_mm)

    @property
    def noise_sd(self) -> float:
        """Noise SD (HU). Default model: 18 HU at 200 effective mAs, 120 kVp, 1.25 mm, soft kernel;
        SD ~ 1/sqrt(mAs), ~ 1/sqrt(thickness), ~ kVp^-1.25, times a kernel factor."""
        if self.noise_sd_hu is not None:
            return float(self.noise_sd_hu)
        kf = {"soft": 1.0, "standard": 1.3, "sharp": 2.4}[self.kernel]
        return (
            18.0
            * (200.0 / self.effective_mas) ** 0.5
            * (1.25 / self.slice_thickness_mm) ** 0.5
            * (120.0 / self.kvp) ** 1.25
            * kf
        )

    @property
    def scanner_model(self) -> str:
        if self.model_name:
            return self.model_name
        return SCANNERS.get(self.manufacturer, ("CT Scanner", {}))[0]

    @property
    def convolution_kernel(self) -> str:
        if self.kernel_name:
            return self.kernel_name
        names = SCANNERS.get(self.manufacturer, ("", {"soft": "SOFT", "standard": "STANDARD", "sharp": "SHARP"}))[1]
        return names[self.kernel]


class StudyContext(BaseModel):
    """Header context: who (fake, non-identifying), why, which protocol."""

    model_config = ConfigDict(extra="forbid")

    patient_name: str = "PHANTOM^CHEST"
    patient_id: str = "PH0001"
    patient_age_years: int = Field(62, ge=0, le=120)
    patient_sex: Literal["M", "F", "O"] = "M"
    patient_weight_kg: Optional[float] = 78.0
    indication: str = "lung cancer screening"
    study_description: str = "CT CHEST"
    protocol_name: str = "CT Chest"
    series_description: Optional[str] = None  # None = derived from thickness and kernel
    body_part: str = "CHEST"
    study_date: str = "20260115"
    study_time: str = "090000"
    accession_number: str = "PHACC0001"
    institution_name: str = "MedImgAI Phantom Lab"
    series_number: int = Field(2, ge=1)
    #: (coding scheme, code value, code meaning) for ProcedureCodeSequence, or None
    procedure_code: Optional[tuple[str, str, str]] = None


class PhantomSpec(BaseModel):
    """Everything that defines one phantom series. Same spec + same seed = same pixels."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    #: seed of the patient (body size, vessel trees, random nodules); None = ``seed``. Keeping it
    #: fixed while changing the acquisition gives the same patient scanned differently.
    anatomy_seed: Optional[int] = None
    nodules: list[NoduleSpec] = Field(default_factory=list)
    random_nodules: Optional[RandomNodules] = None
    acquisition: AcquisitionSpec = Field(default_factory=AcquisitionSpec)
    study: StudyContext = Field(default_factory=StudyContext)
    #: vary body size, lung size and vessel trees with the anatomy seed (False = the canonical adult)
    vary_anatomy: bool = True
    #: make every UID a hash of the seeds (same spec -> same UIDs); default fresh UIDs each run
    deterministic_uids: bool = False
    #: DICOM keyword -> value written over the generated header, or None to leave the attribute out
    #: (e.g. {"CTDIvol": None} for a series whose dose is "missing"). Pixels are unaffected; removing
    #: a Type 1/2 attribute makes the file invalid, as it would be from a real scanner.
    header_overrides: dict[str, Optional[Union[str, float, int, list[str]]]] = Field(default_factory=dict)

    #: slice indices (0 = most inferior) rendered but not written: a series with missing slices
    #: (uneven spacing) for loader and protocol checks; the in-memory volume keeps them
    omit_slices: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_overrides(self) -> "PhantomSpec":
        from pydicom.datadict import tag_for_keyword

        bad = [k for k in self.header_overrides if tag_for_keyword(k) is None]
        if bad:
            raise ValueError(f"header_overrides: not DICOM keywords: {', '.join(bad)}")
        return self

    @property
    def patient_seed(self) -> int:
        return self.seed if self.anatomy_seed is None else self.anatomy_seed


#: named starting points (field overrides) for common protocols
PRESETS: dict[str, dict] = {
    # ACR-STR LDCT lung cancer screening: 120 kVp, CTDIvol <= 3 mGy (standard-size patient),
    # thin slices (<= 2.5 mm, 1.25 typical), reconstruction interval <= thickness
    "ldct-screening": {
        "acquisition": {"kvp": 120, "tube_current_ma": 50, "rotation_time_s": 0.5, "pitch": 1.0,
                        "slice_thickness_mm": 1.25, "reconstruction_interval_mm": 1.0, "kernel": "soft"},
        "study": {"indication": "lung cancer screening", "study_description": "CT CHEST LOW DOSE SCREENING",
                  "protocol_name": "LDCT Lung Screening", "body_part": "CHEST"},
    },
    "routine-chest": {
        "acquisition": {"kvp": 120, "tube_current_ma": 250, "rotation_time_s": 0.5, "pitch": 1.0,
                        "slice_thickness_mm": 1.25, "kernel": "standard", "contrast": "venous"},
        "study": {"indication": "cough, weight loss", "study_description": "CT CHEST WITH CONTRAST",
                  "protocol_name": "Chest Routine", "body_part": "CHEST"},
    },
}


def spec_from_preset(name: str, **overrides) -> PhantomSpec:
    """A ``PhantomSpec`` from a preset name plus top-level / nested overrides."""
    if name not in PRESETS:
        raise PhantomSpecError(f"unknown phantom preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    base = {k: dict(v) for k, v in PRESETS[name].items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value
    return PhantomSpec.model_validate(base)
