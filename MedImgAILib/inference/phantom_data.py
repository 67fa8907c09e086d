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
                 tube_current_ma: Optional[float] = None, diameter_range_mm: tuple[float, float] = (4.0, 20.0),
                 slices: Optional[int] = None) -> PhantomData:
    from ..phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, generate_phantom

    acq = AcquisitionSpec(slice_thickness_mm=slice_thickness_mm, reconstruction_interval_mm=interval_mm, kernel=kernel,
                          matrix=matrix, fov_mm=fov_mm, tube_current_ma=tube_current_ma or NOISE_MA[noise], slices=slices)
    spec = PhantomSpec(seed=seed, random_nodules=RandomNodules(count=nodules, diameter_range_mm=diameter_range_mm),
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
