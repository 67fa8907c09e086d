"""What-if sweep for physicists: how does a detector behave as acquisition changes?

For every acquisition setting (slice thickness x noise x kernel) and every case, a phantom series is
produced, the detector runs on it, and its findings are scored against the phantom's truth: detection
sensitivity, false positives per scan, volume and diameter error. The same case (anatomy and lesions)
is used at every setting, so differences between settings come from the acquisition alone.

The pieces are plain callables so that any model fits:

- a *case factory* ``(setting, case_index) -> SweepCase`` (the built-in ``SyntheticChestCases``, the
  phantom generator's cases via ``PhantomGeneratorCases``, or ``degrade`` applied to a thin-slice
  cohort series with a reference standard),
- a *detector* ``(Volume) -> list[Finding]`` (``threshold_detector``: a classical threshold +
  connected-component detector; the inference stage registers real models with ``register_detector``),
- scoring (``score_case``) and reporting (``write_sweep_outputs``: CSV, JSON, PNG plots).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import MedImgAIError, ModelError
from ..results import Finding
from ..fileio import atomic_output
from ..volume import Volume, affine_from_geometry
from .quality import component_sizes, dilate2d, fill_holes2d, open2d


class SweepError(MedImgAIError):
    kind = "sweep"


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------
#: reconstruction kernels as (signal blur sigma in mm, noise correlation sigma in mm): a soft kernel
#: blurs edges and gives blotchy noise, a sharp one keeps edges and gives fine-grained noise
KERNELS: dict[str, tuple[float, float]] = {
    "soft": (0.9, 1.0),
    "standard": (0.5, 0.6),
    "sharp": (0.0, 0.0),
}

VARY_NAMES = {"slice_thickness": "slice_thickness_mm", "noise": "noise_hu", "kernel": "kernel"}


@dataclass(frozen=True)
class AcquisitionSetting:
    slice_thickness_mm: float = 1.25
    noise_hu: float = 20.0
    kernel: str = "standard"

    def label(self) -> str:
        return f"st={self.slice_thickness_mm:g}mm noise={self.noise_hu:g}HU kernel={self.kernel}"


def parse_vary(items: Sequence[str], kernels: Sequence[str] = ()) -> dict[str, list]:
    """``["slice_thickness=0.625,1.25", "noise=10,30"]`` -> ``{"slice_thickness_mm": [...], ...}``."""
    out: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise SweepError(f"--vary {item!r}: expected NAME=V1,V2,... (names: {', '.join(VARY_NAMES)})")
        name, values = item.split("=", 1)
        name = name.strip()
        if name not in VARY_NAMES:
            raise SweepError(f"--vary {name!r}: unknown parameter; known: {', '.join(VARY_NAMES)}")
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not raw:
            raise SweepError(f"--vary {name}: no values")
        if name == "kernel":
            vals: list = raw
        else:
            try:
                vals = [float(v) for v in raw]
            except ValueError:
                raise SweepError(f"--vary {name}: values must be numbers, got {values!r}") from None
            if any(v <= 0 and name == "slice_thickness" or v < 0 for v in vals):
                raise SweepError(f"--vary {name}: values must be positive, got {values!r}")
        out[VARY_NAMES[name]] = vals
    if kernels:
        out["kernel"] = list(dict.fromkeys(list(out.get("kernel", [])) + list(kernels)))
    for k in out.get("kernel", []):
        if k not in KERNELS:
            raise SweepError(f"kernel {k!r} unknown; known: {', '.join(KERNELS)}")
    return out


def settings_grid(vary: dict[str, list], base: AcquisitionSetting = AcquisitionSetting()) -> list[AcquisitionSetting]:
    names = list(vary)
    grid = []
    for combo in itertools.product(*(vary[n] for n in names)):
        kw = asdict(base)
        kw.update(dict(zip(names, combo)))
        grid.append(AcquisitionSetting(**kw))
    return grid


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------
@dataclass
class TruthLesion:
    center_lps_mm: list[float]
    diameter_mm: float
    volume_mm3: float


@dataclass
class SweepCase:
    case_id: str
    volume: Volume
    lesions: list[TruthLesion]


CaseFactory = Callable[[AcquisitionSetting, int], SweepCase]
Detector = Callable[[Volume], list[Finding]]


def degrade(volume: Volume, setting: AcquisitionSetting, seed: int = 0, match_noise: bool = False) -> Volume:
    """Simulate another acquisition from a thin-slice volume: average slices into the new thickness
    (a boxcar slice profile, contiguous reconstruction), blur in plane by the kernel, then add noise
    filtered to the kernel's texture and scaled so that its SD in the result is ``noise_hu``.

    ``match_noise``: the source's own noise (measured on the thickened, blurred volume with the
    reference-free estimate) counts towards ``noise_hu``: only the difference in quadrature is added.
    A source noisier than the target cannot be made quieter: ``extra["noise_note"]`` says so.
    Without it, the source's noise adds to ``noise_hu`` (give a low-noise source)."""
    arr = np.asarray(volume.array, dtype=np.float32)
    sx, sy, sz = volume.spacing
    factor = setting.slice_thickness_mm / sz
    n = int(round(factor))
    if n < 1 or abs(factor - n) > 1e-3:
        raise SweepError(
            f"slice thickness {setting.slice_thickness_mm} mm is not a whole multiple of the source spacing {sz:g} mm"
        )
    nk = (arr.shape[0] // n) * n
    if nk == 0:
        raise SweepError(f"source has {arr.shape[0]} slices, fewer than one {setting.slice_thickness_mm} mm slice")
    thick = arr[:nk].reshape(nk // n, n, arr.shape[1], arr.shape[2]).mean(axis=1)
    blur_mm, noise_corr_mm = KERNELS[setting.kernel]
    if blur_mm > 0:
        thick = ndi.gaussian_filter(thick, sigma=(0, blur_mm / sy, blur_mm / sx))
    aff = volume.affine.copy()
    # the first thick slice's centre is the mean of the n thin slices it averages
    aff[:3, 2] = volume.affine[:3, 2] * n
    aff[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, 2] * (n - 1) / 2.0
    extra: dict[str, Any] = {"acquisition": asdict(setting)}
    add_sd = setting.noise_hu
    if match_noise:
        from .quality import measure_ct

        have = measure_ct(Volume(array=thick, affine=aff, modality="CT"))["noise_sd_hu"]
        if have is not None:
            extra["source_noise_hu"] = have
            add_sd = math.sqrt(max(setting.noise_hu**2 - have**2, 0.0))
            if have > setting.noise_hu:
                extra["noise_note"] = f"source noise {have:.1f} HU exceeds the requested {setting.noise_hu:g} HU"
    if add_sd > 0:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(thick.shape).astype(np.float32)
        if noise_corr_mm > 0:
            noise = ndi.gaussian_filter(noise, sigma=(0, noise_corr_mm / sy, noise_corr_mm / sx))
        noise *= add_sd / float(noise.std())
        thick = thick + noise
    return Volume(
        array=thick.astype(np.float32),
        affine=aff,
        series_instance_uid=volume.series_instance_uid,
        study_instance_uid=volume.study_instance_uid,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        modality=volume.modality or "CT",
        extra=extra,
    )


class SyntheticChestCases:
    """A small, fast chest phantom for sweeps and tests: an elliptical body (soft tissue 40 HU in a fat
    rim), two lungs (-850 HU) with a few vessels (cylinders running cranio-caudally, 2-4 mm), and solid
    spherical nodules (40 HU) of 5-12 mm placed inside the lungs, on a thin-slice grid that
    ``degrade`` turns into each acquisition setting. Case ``i`` is the same anatomy at every setting.

    Used when the phantom generator (``MedImgAILib.phantoms``) is not installed and in the tests; the
    physics is only partial volume, in-plane blur and noise, which is what slice thickness, kernel and
    dose change first."""

    def __init__(self, seed: int = 0, nodules_per_case: int = 4, diameters_mm: Sequence[float] = (5, 6, 8, 12),
                 pixel_mm: float = 0.8, base_slice_mm: float = 0.3125, z_extent_mm: float = 60.0) -> None:
        self.seed = seed
        self.nodules_per_case = nodules_per_case
        self.diameters_mm = tuple(float(d) for d in diameters_mm)
        self.pixel_mm = pixel_mm
        self.base_slice_mm = base_slice_mm
        self.z_extent_mm = z_extent_mm
        self._truth = lru_cache(maxsize=4)(self._make_truth)

    def _make_truth(self, case_index: int) -> tuple[Volume, tuple[TruthLesion, ...]]:
        rng = np.random.default_rng([self.seed, case_index])
        p, dz = self.pixel_mm, self.base_slice_mm
        ni = nj = int(round(240 / p))
        nk = int(round(self.z_extent_mm / dz))
        x = (np.arange(ni) - ni / 2) * p
        y = (np.arange(nj) - nj / 2) * p
        z = np.arange(nk) * dz
        X, Y = np.meshgrid(x, y)  # [j, i]
        arr = np.full((nk, nj, ni), -1000.0, np.float32)
        body = (X / 110) ** 2 + (Y / 80) ** 2 <= 1
        inner = (X / 102) ** 2 + (Y / 72) ** 2 <= 1
        lungs2d = [((X - cx) / 38) ** 2 + ((Y + 2) / 52) ** 2 <= 1 for cx in (-48.0, 48.0)]
        plane = np.full((nj, ni), -1000.0, np.float32)
        plane[body] = -100.0
        plane[inner] = 40.0
        for l2 in lungs2d:
            plane[l2] = -850.0
        arr[:] = plane
        # vessels: cylinders along z inside the lungs
        for cx in (-48.0, 48.0):
            for _ in range(3):
                vx, vy = cx + rng.uniform(-20, 20), rng.uniform(-30, 30)
                r = rng.uniform(1.0, 2.0)
                arr[:, ((X - vx) ** 2 + (Y - vy) ** 2) <= r * r] = 40.0
        lesions: list[TruthLesion] = []
        placed: list[tuple[float, float, float, float]] = []
        diam_cycle = list(self.diameters_mm)
        tries = 0
        while len(lesions) < self.nodules_per_case and tries < 500:
            tries += 1
            d = diam_cycle[len(lesions) % len(diam_cycle)]
            r = d / 2
            cx = rng.choice([-48.0, 48.0]) + rng.uniform(-22, 22)
            cy = rng.uniform(-36, 32)
            cz = rng.uniform(8 + r, self.z_extent_mm - 8 - r)
            side = -48.0 if cx < 0 else 48.0
            # wholly inside the lung with a 3 mm margin, clear of other nodules and vessels
            if ((abs(cx - side) + r + 3) / 38) ** 2 + ((abs(cy + 2) + r + 3) / 52) ** 2 > 1:
                continue
            if any((cx - a) ** 2 + (cy - b) ** 2 + (cz - c) ** 2 < (r + rr + 6) ** 2 for a, b, c, rr in placed):
                continue
            near = arr[int(cz / dz), :, :]
            jj, ii = np.nonzero(((X - cx) ** 2 + (Y - cy) ** 2) <= (r + 3) ** 2)
            if np.any(near[jj, ii] > -500):
                continue
            placed.append((cx, cy, cz, r))
            # supersampled sphere so that the truth itself carries exact partial volume
            k0, k1 = int((cz - r) / dz) - 1, int((cz + r) / dz) + 2
            j0, j1 = int((cy - r - y[0]) / p) - 1, int((cy + r - y[0]) / p) + 2
            i0, i1 = int((cx - r - x[0]) / p) - 1, int((cx + r - x[0]) / p) + 2
            ss = 3
            off = (np.arange(ss) + 0.5) / ss - 0.5
            kz = (np.arange(k0, k1)[:, None] + off[None, :]).ravel() * dz
            jy = (np.arange(j0, j1)[:, None] + off[None, :]).ravel() * p + y[0]
            ix = (np.arange(i0, i1)[:, None] + off[None, :]).ravel() * p + x[0]
            inside = ((kz[:, None, None] - cz) ** 2 + (jy[None, :, None] - cy) ** 2 + (ix[None, None, :] - cx) ** 2) <= r * r
            frac = inside.reshape(k1 - k0, ss, j1 - j0, ss, i1 - i0, ss).mean(axis=(1, 3, 5)).astype(np.float32)
            sub = arr[k0:k1, j0:j1, i0:i1]
            arr[k0:k1, j0:j1, i0:i1] = sub * (1 - frac) + 40.0 * frac
            lesions.append(TruthLesion(center_lps_mm=[cx, cy, cz], diameter_mm=d, volume_mm3=math.pi / 6 * d**3))
        aff = affine_from_geometry((float(x[0]), float(y[0]), 0.0), (p, p, dz), np.eye(3))
        vol = Volume(array=arr, affine=aff, modality="CT", series_instance_uid=f"synthetic-chest-{self.seed}-{case_index}")
        return vol, tuple(lesions)

    def __call__(self, setting: AcquisitionSetting, case_index: int) -> SweepCase:
        truth, lesions = self._truth(case_index)
        # a stable seed (Python's str hash changes per process): same setting and case, same noise
        seed = zlib.crc32(repr((self.seed, case_index, setting)).encode())
        vol = degrade(truth, setting, seed=seed)
        return SweepCase(case_id=f"case{case_index:03d}", volume=vol, lesions=list(lesions))


class CohortCases:
    """A thin-slice cohort with a reference standard, degraded to each setting (``degrade`` with
    ``match_noise``): each sub-folder (or the folder itself) holds one CT series and either the phantom
    generator's ``truth.json`` or a ``lesions.json`` list of ``{"center_lps_mm": [x, y, z],
    "diameter_mm": d, "volume_mm3": v}``. Case ``i`` is the i-th such folder in name order."""

    def __init__(self, folder: str | Path, limit: int | None = None) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise SweepError(f"cohort folder {root} does not exist")
        dirs = [d for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())]
                if (d / "truth.json").exists() or (d / "lesions.json").exists()]
        if not dirs:
            raise SweepError(f"cohort folder {root} holds no series with truth.json or lesions.json")
        self.dirs = dirs[:limit] if limit else dirs
        self._load = lru_cache(maxsize=2)(self._load_case)

    def __len__(self) -> int:
        return len(self.dirs)

    def _load_case(self, i: int) -> tuple[Volume, tuple[TruthLesion, ...]]:
        from ..dicom import load_volume

        d = self.dirs[i]
        if (d / "truth.json").exists():
            items = json.loads((d / "truth.json").read_text()).get("nodules", [])
        else:
            items = json.loads((d / "lesions.json").read_text())
        try:
            lesions = tuple(
                TruthLesion(center_lps_mm=[float(v) for v in n["center_lps_mm"]],
                            diameter_mm=float(n.get("equivalent_diameter_mm") or n["diameter_mm"]),
                            volume_mm3=float(n["volume_mm3"]))
                for n in items
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SweepError(f"cohort case {d}: a lesion lacks center_lps_mm / diameter_mm / volume_mm3 ({exc})") from None
        return load_volume(d), lesions

    def __call__(self, setting: AcquisitionSetting, case_index: int) -> SweepCase:
        if case_index >= len(self.dirs):
            raise SweepError(f"the cohort has {len(self.dirs)} cases; case {case_index + 1} was asked for")
        vol, lesions = self._load(case_index)
        seed = zlib.crc32(repr((str(self.dirs[case_index]), setting)).encode())
        return SweepCase(case_id=self.dirs[case_index].name, volume=degrade(vol, setting, seed=seed, match_noise=True),
                         lesions=list(lesions))


class PhantomGeneratorCases:
    """Cases from the project's chest-CT phantom generator (``MedImgAILib.phantoms``): full anatomy
    (ribs, spine, heart, space-filling vessel trees) with random solid nodules, rendered with the
    generator's own slice profile, kernel PSF and kernel-textured noise for each setting. Case ``i``
    keeps its patient (``anatomy_seed``) across settings; the noise seed changes with the setting."""

    def __init__(self, seed: int = 0, nodules_per_case: int = 4, diameter_range_mm: tuple[float, float] = (4.0, 12.0),
                 matrix: int = 256, fov_mm: float = 380.0) -> None:
        self.seed = seed
        self.nodules_per_case = nodules_per_case
        self.diameter_range_mm = diameter_range_mm
        self.matrix = matrix
        self.fov_mm = fov_mm

    @staticmethod
    def available() -> bool:
        try:
            import MedImgAILib.phantoms  # noqa: F401
        except ImportError:
            return False
        return True

    def __call__(self, setting: AcquisitionSetting, case_index: int) -> SweepCase:
        from ..phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, generate_phantom

        anatomy = self.seed * 10_000 + case_index
        spec = PhantomSpec(
            seed=zlib.crc32(repr((self.seed, case_index, setting)).encode()) & 0x7FFFFFFF,
            anatomy_seed=anatomy,
            random_nodules=RandomNodules(count=self.nodules_per_case, diameter_range_mm=self.diameter_range_mm,
                                         types=["solid"], shapes=["sphere"], juxtapleural_fraction=0.0),
            acquisition=AcquisitionSpec(matrix=self.matrix, fov_mm=self.fov_mm,
                                        slice_thickness_mm=setting.slice_thickness_mm,
                                        kernel=setting.kernel, noise_sd_hu=setting.noise_hu),
        )
        case = generate_phantom(spec)
        lesions = [
            TruthLesion(center_lps_mm=[float(v) for v in n["center_lps_mm"]],
                        diameter_mm=float(n.get("equivalent_diameter_mm") or n["diameter_mm"]),
                        volume_mm3=float(n["volume_mm3"]))
            for n in case.truth["nodules"]
        ]
        return SweepCase(case_id=f"case{case_index:03d}", volume=case.volume, lesions=lesions)


# --------------------------------------------------------------------------------------------------
# a classical detector (reference, and the stand-in when no model is installed)
# --------------------------------------------------------------------------------------------------
def _ellipsoid(radius_mm: float, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    r = [radius_mm / sp for sp in spacing_zyx]
    half = [int(math.floor(x)) for x in r]
    zz, yy, xx = np.mgrid[-half[0]:half[0] + 1, -half[1]:half[1] + 1, -half[2]:half[2] + 1]
    terms = [(a / max(b, 1e-6)) ** 2 if h > 0 else np.zeros_like(a, dtype=float) for a, b, h in
             ((zz, r[0], half[0]), (yy, r[1], half[1]), (xx, r[2], half[2]))]
    return (terms[0] + terms[1] + terms[2]) <= 1.0


def threshold_detector(volume: Volume, threshold_hu: float = -450.0, min_diameter_mm: float = 3.5,
                       max_elongation: float = 2.2,
                       max_shell_fraction: float | None = 0.03, scales_mm: tuple[float, ...] = (1.25, 3.5),
                       _debug: list | None = None) -> list[Finding]:
    """Solid nodules as compact dense blobs inside the lungs: a classical reference detector.

    Lung region: air-density voxels inside the body outline with their in-slice holes filled (so a
    nodule surrounded by lung is inside it). Candidates: voxels above ``threshold_hu`` (about half way
    between lung and soft tissue, so partial volume shrinks small nodules as it would a reader's
    half-maximum contour) after an in-plane smoothing against noise. At each scale in ``scales_mm`` a
    morphological opening with an in-plane disk of that radius removes vessels thinner than the disk
    (and cuts a nodule free from the vessels running into it); each surviving blob is grown back
    inside the candidates to measure its volume. Blobs smaller than a ``min_diameter_mm`` sphere (or
    than 0.9 slice thicknesses), elongated ones (thick vessels), ones with dense tubes leaving them in a
    1-3 mm shell (vessel junctions; ``max_shell_fraction``, relaxed 5x at the larger scales), and ones
    cut by the first or last slice are dropped; a blob found at two scales counts once. Tuned on the
    synthetic sweep chest and on the phantom generator's chest with its vessel trees; a reference, not
    a product."""
    hu = np.asarray(volume.array, dtype=np.float32)
    sx, sy, sz = volume.spacing
    body = hu > -500
    lab, n = ndi.label(open2d(body))
    if n == 0:
        return []
    body = lab == int(np.argmax(component_sizes(lab, n))) + 1
    body_filled = fill_holes2d(body)
    lung_core = body_filled & (hu < -400)
    lung_region = fill_holes2d(lung_core)
    lung_region &= ~dilate2d(~body_filled, max(1, int(4 / sx)))
    if not lung_region.any():
        return []
    # work inside the lungs' bounding box: most of the volume is body wall and air
    box = ndi.find_objects(lung_region.astype(np.uint8))[0]
    sub = hu[box]
    smooth = ndi.gaussian_filter(sub, sigma=(0, 0.8 / sy, 0.8 / sx))
    cand = (smooth > threshold_hu) & lung_region[box]
    voxel = volume.voxel_volume_mm3
    # a blob thinner than about one slice cannot be told from a vessel crossing the slice
    min_d = max(min_diameter_mm, 0.9 * sz)
    min_vox = (math.pi / 6 * min_d**3) / voxel
    findings: list[Finding] = []
    # several scales: the small disk keeps small nodules; the larger ones cut a big nodule free from
    # the vessels running into it (which otherwise join it to a whole vessel tree)
    for radius in scales_mm:
        min_here = max(min_vox, (math.pi / 6 * (2 * radius + 1.0) ** 3) / voxel) if radius > scales_mm[0] else min_vox
        # a large nodule has several vessels running into it; a small vessel junction looks alike with
        # fewer, so the isolation demanded relaxes with the scale
        shell_here = None if max_shell_fraction is None else max_shell_fraction * (1.0 if radius == scales_mm[0] else 5.0)
        for f in _blobs(volume, hu, box, cand, lung_region, radius, min_here, max_elongation, shell_here, _debug):
            if all(np.linalg.norm(np.subtract(f.center_lps_mm, g.center_lps_mm)) > 3.0 for g in findings):
                findings.append(f.model_copy(update={"id": f"F{len(findings) + 1}"}))
    return findings


def _blobs(volume: Volume, hu: np.ndarray, box: tuple, cand: np.ndarray, lung_region: np.ndarray, radius_mm: float,
           min_vox: float, max_elongation: float, max_shell_fraction: float | None, _debug: list | None) -> list[Finding]:
    sx, sy, sz = volume.spacing
    # in-plane disk: a small nodule may span only two slices, so the opening must not erode along z;
    # vessels running along z survive it and are rejected below as elongated
    se = _ellipsoid(radius_mm, (1e9, sy, sx))
    cores = ndi.binary_opening(cand, structure=se)
    lab, n = ndi.label(cores)
    if n == 0:
        return []
    grown_all = ndi.binary_dilation(cores, structure=se) & cand
    voxel = volume.voxel_volume_mm3
    nk_total = hu.shape[0]
    findings: list[Finding] = []
    pad = [s // 2 + 1 for s in se.shape]
    for idx, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        big = tuple(slice(max(0, a.start - p), a.stop + p) for a, p in zip(sl, pad))
        core = lab[big] == idx
        comp = ndi.binary_dilation(core, structure=se) & grown_all[big]
        nvox = int(comp.sum())
        if nvox < max(min_vox, 2):
            continue
        kk, jj, ii = np.nonzero(comp)
        k0 = box[0].start + big[0].start
        if k0 + kk.min() == 0 or k0 + kk.max() == nk_total - 1:
            continue  # cut by the scan range: cannot tell a vessel from a nodule
        ijk = np.stack([ii + box[2].start + big[2].start, jj + box[1].start + big[1].start, kk + k0], axis=1).astype(float)
        pts = volume.ijk_to_lps(ijk)
        if len(pts) >= 4:
            # slab-shaped voxels: add each axis' own quantization variance so thin slabs are not "flat"
            ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T) + np.diag([sx * sx, sy * sy, sz * sz]) / 12))
            if ev[0] <= 0 or math.sqrt(ev[-1] / ev[0]) > max_elongation:
                continue
        vol_mm3 = nvox * voxel
        d_eq = 2 * (3 * vol_mm3 / (4 * math.pi)) ** (1 / 3)
        # isolation: a nodule sits in lung; a vessel junction has tubes leaving it in every direction.
        # Fraction of dense voxels in a shell 1-3 mm outside the blob (within its box + 3 mm)
        r_out = max(1, int(round(3.0 / sx)))
        shell_box = tuple(slice(max(0, a.start - p - (r_out if i else max(1, int(round(3.0 / sz))))),
                                a.stop + p + (r_out if i else max(1, int(round(3.0 / sz)))))
                          for i, (a, p) in enumerate(zip(sl, pad)))
        blob = np.zeros(cand[shell_box].shape, bool)
        off = [b.start - sb.start for b, sb in zip(big, shell_box)]
        blob[off[0]:off[0] + comp.shape[0], off[1]:off[1] + comp.shape[1], off[2]:off[2] + comp.shape[2]] = comp
        outer = ndi.binary_dilation(blob, structure=_ellipsoid(3.0, (sz, sy, sx)))
        inner = ndi.binary_dilation(blob, structure=_ellipsoid(1.0, (sz, sy, sx)))
        shell = outer & ~inner & lung_region[box][shell_box]
        shell_frac = float(cand[shell_box][shell].mean()) if shell.any() else 0.0
        if _debug is not None:
            _debug.append((ijk.mean(axis=0), d_eq, shell_frac))
        if max_shell_fraction is not None and shell_frac > max_shell_fraction:
            continue
        findings.append(Finding(
            id=f"F{len(findings) + 1}", label="nodule", type="solid",
            center_lps_mm=[float(v) for v in pts.mean(axis=0)], volume_mm3=float(vol_mm3),
            mean_diameter_mm=float(d_eq), mean_hu=float(hu[box][big][comp].mean()),
        ))
    return findings


_DETECTORS: dict[str, Callable[[], Detector]] = {"classical-threshold": lambda: threshold_detector}


def register_detector(model_id: str, factory: Callable[[], Detector]) -> None:
    """Make a model available to ``medimgai protocol sweep --model ID`` (the inference stage calls this
    with a factory that loads the model once and returns ``volume -> list[Finding]``)."""
    _DETECTORS[model_id] = factory


def model_detector(model_id: str, device: str | None = None) -> Detector:
    """A model card's model as a sweep detector: inference, then the findings stage, exactly as the
    pipeline measures (so the sweep shows what the department would get)."""
    from ..findings.extract import extract_findings, label_specs_from_card
    from ..inference.engine import run_model
    from ..models.registry import get_card

    card = get_card(model_id)
    specs = label_specs_from_card(card)

    def detect(volume: Volume) -> list[Finding]:
        vol = volume if volume.modality else volume.with_array(volume.array, modality=card.modality)
        out = run_model(card, vol, device=device)
        probs = out.prediction.probabilities
        return extract_findings(out.labels, vol, probs if probs is not None and probs.array.shape == vol.array.shape else None, specs)

    return detect


def resolve_detector(model_id: str) -> Detector:
    if model_id in _DETECTORS:
        return _DETECTORS[model_id]()
    from ..models.registry import list_cards

    if model_id in {c.id for c in list_cards()}:
        return model_detector(model_id)
    raise ModelError(
        f"model {model_id!r} is not available to the sweep; available: {', '.join(sorted(_DETECTORS))} "
        "(a model becomes available when the inference stage registers it with register_detector)"
    )


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------
@dataclass
class CaseScore:
    case_id: str
    tp: int
    fn: int
    fp: int
    #: per matched lesion: (true diameter, detected volume error %, detected diameter error mm)
    matched: list[tuple[float, float, float]] = field(default_factory=list)
    missed_diameters_mm: list[float] = field(default_factory=list)


def _finding_diameter(f: Finding) -> float | None:
    for v in (f.mean_diameter_mm, f.max_3d_diameter_mm, f.long_axis_mm):
        if v is not None:
            return float(v)
    if f.volume_mm3:
        return 2 * (3 * f.volume_mm3 / (4 * math.pi)) ** (1 / 3)
    return None


def score_case(case_id: str, findings: Sequence[Finding], lesions: Sequence[TruthLesion],
               match_margin_mm: float = 3.0) -> CaseScore:
    """Greedy nearest matching: a finding hits a lesion when its centre lies within the lesion's radius
    plus ``match_margin_mm``; each lesion and finding matches at most once."""
    pairs = []
    for li, les in enumerate(lesions):
        for fi, f in enumerate(findings):
            if len(f.center_lps_mm) != 3:
                continue
            d = float(np.linalg.norm(np.asarray(f.center_lps_mm) - np.asarray(les.center_lps_mm)))
            if d <= les.diameter_mm / 2 + match_margin_mm:
                pairs.append((d, li, fi))
    pairs.sort()
    used_l, used_f = set(), set()
    matched = []
    for d, li, fi in pairs:
        if li in used_l or fi in used_f:
            continue
        used_l.add(li)
        used_f.add(fi)
        les, f = lesions[li], findings[fi]
        vol_err = (100.0 * (f.volume_mm3 - les.volume_mm3) / les.volume_mm3) if f.volume_mm3 is not None else float("nan")
        dd = _finding_diameter(f)
        matched.append((les.diameter_mm, vol_err, (dd - les.diameter_mm) if dd is not None else float("nan")))
    missed = [lesions[i].diameter_mm for i in range(len(lesions)) if i not in used_l]
    return CaseScore(case_id=case_id, tp=len(used_l), fn=len(lesions) - len(used_l), fp=len(findings) - len(used_f),
                     matched=matched, missed_diameters_mm=missed)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def summarize(setting: AcquisitionSetting, scores: Sequence[CaseScore], seconds: float) -> dict[str, Any]:
    tp = sum(s.tp for s in scores)
    fn = sum(s.fn for s in scores)
    fp = sum(s.fp for s in scores)
    n_les = tp + fn
    vol_err = np.array([m[1] for s in scores for m in s.matched], dtype=float)
    d_err = np.array([m[2] for s in scores for m in s.matched], dtype=float)
    lo, hi = _wilson(tp, n_les)

    def stat(a: np.ndarray, f) -> float | None:
        a = a[np.isfinite(a)]
        return float(f(a)) if a.size else None

    by_size: dict[str, Any] = {}
    sizes = sorted({m[0] for s in scores for m in s.matched} | {d for s in scores for d in s.missed_diameters_mm})
    for d in sizes:
        hit = sum(1 for s in scores for m in s.matched if m[0] == d)
        miss = sum(1 for s in scores for x in s.missed_diameters_mm if x == d)
        by_size[f"{d:g}"] = round(hit / (hit + miss), 4) if hit + miss else None
    return {
        "slice_thickness_mm": setting.slice_thickness_mm,
        "noise_hu": setting.noise_hu,
        "kernel": setting.kernel,
        "cases": len(scores),
        "lesions": n_les,
        "true_positives": tp,
        "false_negatives": fn,
        "false_positives": fp,
        "sensitivity": round(tp / n_les, 4) if n_les else None,
        "sensitivity_ci95_low": round(lo, 4) if lo is not None else None,
        "sensitivity_ci95_high": round(hi, 4) if hi is not None else None,
        "fp_per_scan": round(fp / len(scores), 4) if scores else None,
        "volume_error_pct_mean": stat(vol_err, np.mean),
        "volume_error_pct_mean_abs": stat(vol_err, lambda a: np.mean(np.abs(a))),
        "diameter_error_mm_mean": stat(d_err, np.mean),
        "diameter_error_mm_mean_abs": stat(d_err, lambda a: np.mean(np.abs(a))),
        "sensitivity_by_diameter_mm": by_size,
        "seconds": round(seconds, 3),
    }


# --------------------------------------------------------------------------------------------------
# running and reporting
# --------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    model_id: str
    case_source: str
    settings: list[dict[str, Any]]
    per_case: list[dict[str, Any]]
    varied: dict[str, list]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "medimgai.protocol-sweep/1",
            "model": self.model_id,
            "case_source": self.case_source,
            "varied": self.varied,
            "settings": self.settings,
            "per_case": self.per_case,
        }


def run_sweep(
    settings: Sequence[AcquisitionSetting],
    cases: int,
    case_factory: CaseFactory,
    detector: Detector,
    *,
    model_id: str = "",
    case_source: str = "",
    varied: dict[str, list] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SweepResult:
    if cases < 1:
        raise SweepError("--cases must be at least 1")
    rows, per_case = [], []
    total, done = len(settings) * cases, 0
    for setting in settings:
        t0 = time.perf_counter()
        scores = []
        for ci in range(cases):
            if cancel is not None and cancel():
                from ..errors import CancelledError

                raise CancelledError("sweep cancelled")
            case = case_factory(setting, ci)
            findings = detector(case.volume)
            sc = score_case(case.case_id, findings, case.lesions)
            scores.append(sc)
            per_case.append({**asdict(setting), "case": case.case_id, "tp": sc.tp, "fn": sc.fn, "fp": sc.fp,
                             "missed_diameters_mm": sc.missed_diameters_mm})
            done += 1
            if progress is not None:
                progress(done, total, setting.label())
        rows.append(summarize(setting, scores, time.perf_counter() - t0))
    return SweepResult(model_id=model_id, case_source=case_source, settings=rows, per_case=per_case,
                       varied=varied or {})


CSV_COLUMNS = [
    "slice_thickness_mm", "noise_hu", "kernel", "cases", "lesions", "true_positives", "false_negatives",
    "false_positives", "sensitivity", "sensitivity_ci95_low", "sensitivity_ci95_high", "fp_per_scan",
    "volume_error_pct_mean", "volume_error_pct_mean_abs", "diameter_error_mm_mean",
    "diameter_error_mm_mean_abs", "seconds",
]

PLOTS = [
    ("sensitivity", "Detection sensitivity", "sensitivity.png"),
    ("fp_per_scan", "False positives per scan", "fp_per_scan.png"),
    ("volume_error_pct_mean_abs", "Mean |volume error| (%)", "volume_error.png"),
    ("diameter_error_mm_mean_abs", "Mean |diameter error| (mm)", "diameter_error.png"),
]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as fh:
        fh.write(data)


def _plot(result: SweepResult, metric: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = result.settings
    varied = [k for k in ("slice_thickness_mm", "noise_hu", "kernel") if len({r[k] for r in rows}) > 1]
    x_key = varied[0] if varied else "slice_thickness_mm"
    line_keys = [k for k in ("slice_thickness_mm", "noise_hu", "kernel") if k != x_key and k in varied]
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in line_keys), []).append(r)
    for key, rs in groups.items():
        rs = [r for r in rs if r[metric] is not None]
        if not rs:
            continue
        xs = [r[x_key] for r in rs]
        ys = [r[metric] for r in rs]
        label = ", ".join(f"{k.split('_')[0]}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(line_keys, key)) or "all"
        if metric == "sensitivity":
            lo = [r[metric] - r["sensitivity_ci95_low"] for r in rs]
            hi = [r["sensitivity_ci95_high"] - r[metric] for r in rs]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel({"slice_thickness_mm": "Slice thickness (mm)", "noise_hu": "Noise SD (HU)", "kernel": "Kernel"}[x_key])
    ax.set_ylabel(title)
    if metric == "sensitivity":
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}: {result.model_id}")
    ax.grid(True, alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_sweep_outputs(result: SweepResult, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in result.settings:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    paths["csv"] = out / "sweep.csv"
    _atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    paths["json"] = out / "sweep.json"
    _atomic_write_bytes(paths["json"], json.dumps(result.to_json(), indent=2).encode())
    for metric, title, name in PLOTS:
        p = out / name
        _atomic_write_bytes(p, _plot(result, metric, title))
        paths[metric] = p
    return paths
