"""The engine's windows are MONAI's windows over the whole model grid; the lung crop only skips the
ones that do not touch the lungs, so it changes the work and never the answer there.

Why this matters: the shipped network's output depends on where a window's borders fall (zero
padding at each window's edge). A crop that moved the windows changed its findings by up to ~50 % in
volume on the benchmark phantom (docs/inference.md)."""

from __future__ import annotations

import numpy as np
import torch

from MedImgAILib.inference import RunOptions, run_model
from MedImgAILib.inference.runners import window_slices
from MedImgAILib.volume import Volume, affine_from_geometry


def test_window_slices_are_the_windows_monai_runs():
    from monai.inferers import sliding_window_inference

    shape, roi = (70, 50, 41), (32, 32, 32)
    seen: list[tuple[slice, ...]] = []

    def predictor(x, coords):
        seen.extend(tuple(c[2:]) for c in coords)
        return x

    sliding_window_inference(torch.zeros((1, 1, *shape)), roi, 3, predictor, overlap=0.25, with_coord=True)
    assert window_slices(shape, roi, 0.25) == seen


def _chest_in_a_large_field() -> tuple[Volume, np.ndarray]:
    """Synthetic CT at 1.5 mm: a body (0 HU) holding two lungs (-850 HU) and a 12 mm nodule (+40 HU),
    in one corner of a field of air, so that most of the network's windows see only air."""
    shape = (110, 220, 220)  # k, j, i
    k, j, i = np.indices(shape, dtype=np.float32)
    arr = np.full(shape, -1000.0, np.float32)
    body = ((i - 60) / 50) ** 2 + ((j - 60) / 40) ** 2 <= 1
    body &= (k > 5) & (k < 95)
    arr[body] = 0.0
    for ci in (38, 82):
        lung = (((i - ci) / 18) ** 2 + ((j - 60) / 28) ** 2 <= 1) & (k > 12) & (k < 88)
        arr[lung] = -850.0
    nodule = ((i - 38) ** 2 + (j - 60) ** 2 + (k - 50) ** 2) * 1.5 ** 2 <= 6.0 ** 2
    arr[nodule] = 40.0
    aff = affine_from_geometry((0.0, 0.0, 0.0), (1.5, 1.5, 1.5), np.eye(3))
    return Volume(array=arr, affine=aff, modality="CT"), nodule


def test_lung_crop_skips_windows_and_keeps_the_answer():
    vol, nodule = _chest_in_a_large_field()
    before = vol.array.copy()
    opts = dict(return_probabilities=True, sw_batch_size=1)
    whole = run_model("ct-lung-nodule", vol, device="cpu", options=RunOptions(crop="none", **opts))
    # the model grid is the source grid here: the series must come back untouched (it was once
    # normalized in place, and the next run then found no lungs)
    assert np.array_equal(vol.array, before)
    crop = run_model("ct-lung-nodule", vol, device="cpu", options=RunOptions(crop="lungs", **opts))
    assert crop.info["windows"] == whole.info["windows"] == whole.info["windows_run"]
    assert crop.info["windows_run"] < whole.info["windows"] / 2  # most windows see only air
    lo, hi = crop.info["crop_box_model_kji"]
    inside = tuple(slice(a, b) for a, b in zip(lo, hi))  # the model grid is the source grid here
    assert np.abs(crop.prediction.probabilities.array[inside] - whole.prediction.probabilities.array[inside]).max() < 1e-5
    # the same label map, and not a vacuous one: the nodule is found
    assert np.array_equal(crop.labels.array, whole.labels.array)
    assert (crop.labels.array[nodule] > 0).mean() > 0.5
