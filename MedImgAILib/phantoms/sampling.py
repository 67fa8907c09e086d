"""Random but seeded case specifications for training and test sets: each seed gives a different
patient, nodules and acquisition drawn from ranges that span what clinical chest CT produces."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .spec import SCANNERS, AcquisitionSpec, NoduleType, PhantomSpec, RandomNodules


def sample_spec(
    seed: int,
    *,
    matrix: int = 256,
    fov_mm: float = 380.0,
    thicknesses_mm: Sequence[float] = (0.625, 1.25, 2.5, 5.0),
    kernels: Sequence[str] = ("soft", "standard", "sharp"),
    noise_sd_range_hu: tuple[float, float] = (8.0, 60.0),
    kvps: Sequence[float] = (100.0, 120.0, 140.0),
    nodule_count: tuple[int, int] = (1, 6),
    diameter_range_mm: tuple[float, float] = (4.0, 25.0),
    types: Sequence[NoduleType] = ("solid", "solid", "part_solid", "ground_glass"),
    juxtapleural_fraction: float = 0.2,
    perifissural_fraction: float = 0.1,
    slices: int | None = None,
) -> PhantomSpec:
    """A reproducible random case: ``sample_spec(s)`` is the same spec for the same arguments.

    The acquisition (thickness, kernel, noise, kVp, vendor) and the patient (anatomy, nodules) are
    drawn from separate streams of ``seed``. With ``slices`` None the z extent covers both lungs."""
    rng = np.random.default_rng([int(seed), 606])
    t = float(rng.choice(np.asarray(thicknesses_mm, float)))
    lo, hi = noise_sd_range_hu
    vendor = sorted(SCANNERS)[int(rng.integers(len(SCANNERS)))]
    acq = AcquisitionSpec(
        matrix=matrix,
        fov_mm=fov_mm,
        slice_thickness_mm=t,
        slices=slices,
        kernel=str(rng.choice(list(kernels))),
        noise_sd_hu=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
        kvp=float(rng.choice(np.asarray(kvps, float))),
        manufacturer=vendor,
    )
    nodules = RandomNodules(
        count=int(rng.integers(nodule_count[0], nodule_count[1] + 1)),
        diameter_range_mm=diameter_range_mm,
        types=list(types),
        juxtapleural_fraction=juxtapleural_fraction,
        perifissural_fraction=perifissural_fraction,
    )
    return PhantomSpec(seed=int(seed), random_nodules=nodules, acquisition=acq)
