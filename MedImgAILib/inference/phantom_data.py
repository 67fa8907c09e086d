"""Phantom cases for training and evaluating ``ct-lung-nodule`` (from :mod:`MedImgAILib.phantoms`).

Seeds below ``TRAIN_SEED_LIMIT`` are for training; evaluation starts at ``TEST_SEED_START``, so the
test patients (anatomy, vessel trees, nodules) are never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..volume import Volume

TRAIN_SEED_LIMIT = 10_000
TEST_SEED_START = 10_000

#: tube current standing for a noise level (120 kVp, 0.5 s, pitch 1): "low" noise is a routine dose,
#: "high" noise a low-dose screening scan at its low end
NOISE_MA = {"low": 300.0, "mid": 120.0, "high": 40.0}


@dataclass
class PhantomData:
    volume: Volume  # HU
    nodule_label_map: np.ndarray  # uint8, nodule i has value i (truth order)
    nodules: list[dict[str, Any]]  # center_lps_mm, diameter_mm, volume_mm3, type, ...
    acquisition: dict[str, Any]

    @property
    def nodule_mask(self) -> np.ndarray:
        return self.nodule_label_map > 0


def phantom_case(seed: int, *, slice_thickness_mm: float = 1.25, kernel: str = "soft", noise: str = "low",
                 matrix: int = 256, fov_mm: float = 380.0, nodules: int = 4, interval_mm: Optional[float] = None,
                 tube_current_ma: Optional[float] = None, diameter_range_mm: tuple[float, float] = (4.0, 20.0), perifissural_fraction: float = 0.1,
                 slices: Optional[int] = None, cache: bool = True) -> PhantomData:
    """One phantom case. Rendering a case takes tens of seconds on 2 cores, so cases are kept in
    ``MEDIMGAI_CACHE/phantoms`` keyed by every argument and the generator's source (``cache=False``
    to bypass): re-running an evaluation or a training then costs only the model's time."""
    args = dict(seed=seed, slice_thickness_mm=slice_thickness_mm, kernel=kernel, noise=noise, matrix=matrix, fov_mm=fov_mm,
                nodules=nodules, interval_mm=interval_mm, tube_current_ma=tube_current_ma,
                diameter_range_mm=list(diameter_range_mm), slices=slices,
                perifissural_fraction=perifissural_fraction)
    path = _cache_path(args) if cache else None
    if path is not None and path.is_file():
        try:
            return _load_cached(path)
        except Exception:  # a damaged cache entry is regenerated, never trusted
            path.unlink(missing_ok=True)
    data = _render(**args)
    if path is not None:
        _save_cached(path, data)
    return data


def _generator_fingerprint() -> str:
    import hashlib
    from pathlib import Path

    from .. import phantoms

    h = hashlib.sha256()
    for f in sorted(Path(phantoms.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cache_path(args: dict[str, Any]):
    import hashlib
    import json

    from ..models.weights import cache_dir

    key = hashlib.sha256(json.dumps({**args, "generator": _generator_fingerprint()}, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "phantoms" / f"case-{args['seed']}-{key}.npz"


def _save_cached(path, data: "PhantomData") -> None:
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.npz")
    np.savez(tmp, array=data.volume.array.astype(np.int16), affine=data.volume.affine, labels=data.nodule_label_map,
             nodules=json.dumps(data.nodules), acquisition=json.dumps(data.acquisition))
    os.replace(tmp, path)


def _load_cached(path) -> "PhantomData":
    import json

    d = np.load(path)
    vol = Volume(array=d["array"].astype(np.float32), affine=d["affine"], modality="CT")
    return PhantomData(volume=vol, nodule_label_map=d["labels"], nodules=json.loads(str(d["nodules"])),
                       acquisition=json.loads(str(d["acquisition"])))


def _render(*, seed: int, slice_thickness_mm: float, kernel: str, noise: str, matrix: int, fov_mm: float, nodules: int,
            interval_mm: Optional[float], tube_current_ma: Optional[float], diameter_range_mm, slices: Optional[int],
            perifissural_fraction: float) -> PhantomData:
    from ..phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, generate_phantom

    acq = AcquisitionSpec(slice_thickness_mm=slice_thickness_mm, reconstruction_interval_mm=interval_mm, kernel=kernel,
                          matrix=matrix, fov_mm=fov_mm, tube_current_ma=tube_current_ma or NOISE_MA[noise], slices=slices)
    spec = PhantomSpec(seed=seed, random_nodules=RandomNodules(count=nodules, diameter_range_mm=tuple(diameter_range_mm),
                                                           perifissural_fraction=perifissural_fraction),
                       acquisition=acq, deterministic_uids=True)
    case = generate_phantom(spec)
    assert case.volume is not None and case.labels is not None
    nods = []
    for n in case.truth["nodules"]:
        nods.append({"center_lps_mm": n["center_lps_mm"], "diameter_mm": n["equivalent_diameter_mm"],
                     "nominal_diameter_mm": n["diameter_mm"], "volume_mm3": n["volume_mm3"], "type": n["type"],
                     "label_value": n["label_value"]})
    # renumber so that nodule i (1-based, truth order) has value i in the label map
    lut = np.zeros(256, dtype=np.uint8)
    for i, n in enumerate(nods, start=1):
        lut[n["label_value"]] = i
    labels = lut[case.labels]
    info = {"seed": seed, "slice_thickness_mm": slice_thickness_mm, "kernel": kernel, "noise": noise,
            "matrix": matrix, "noise_sd_hu": case.truth["noise_sd_hu"]}
    return PhantomData(volume=case.volume, nodule_label_map=labels, nodules=nods, acquisition=info)


def sample_acquisition(rng: np.random.Generator) -> dict[str, Any]:
    """A random training acquisition spanning what the model must handle. Thin slices are rendered at
    a 1 mm reconstruction interval: the network sees a 1.5 mm grid either way, and it halves the
    rendering time of 0.625 mm cases."""
    t = float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    return {
        "slice_thickness_mm": t,
        "interval_mm": max(t, 1.0) if t < 1.0 else None,
        "kernel": str(rng.choice(["soft", "standard", "sharp"])),
        "noise": "low",
        "tube_current_ma": float(np.exp(rng.uniform(np.log(30.0), np.log(400.0)))),
        "matrix": int(rng.choice([192, 256, 256])),
        "fov_mm": float(rng.uniform(340.0, 420.0)),
        "nodules": 6,
    }
