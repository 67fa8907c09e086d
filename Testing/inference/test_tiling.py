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


def test_back_to_source_in_small_boxes_equals_the_whole_series():
    """Resampling the probability back only around its groups of foreground gives the label map a
    whole-series resample + threshold + the card's component rules give, on an oblique series."""
    from MedImgAILib.inference import geometry as geo
    from MedImgAILib.inference.runners import _back_to_source, remove_small_components
    from MedImgAILib.models import get_card

    from .conftest import rotation

    card = get_card("ct-lung-nodule")
    src_aff = affine_from_geometry((-60.0, -50.0, -40.0), (0.8, 0.8, 1.25), rotation("x", 15) @ rotation("z", 10))
    vol = Volume(array=np.zeros((70, 120, 110), np.float32), affine=src_aff, modality="CT")
    grid = geo.model_grid(geo.Grid.of(vol), "LPS", (1.5, 1.5, 1.5))
    rng = np.random.default_rng(0)
    k, j, i = np.indices(grid.shape_kji, dtype=np.float32)
    p = np.zeros(grid.shape_kji, np.float32)
    centres = [np.asarray(grid.shape_kji) * f for f in ((0.3, 0.3, 0.3), (0.35, 0.33, 0.3), (0.7, 0.6, 0.5), (0.5, 0.8, 0.7))]
    for c, r in zip(centres, (5.0, 3.0, 6.0, 2.5)):  # the first two close enough to share a box
        d = np.sqrt((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2)
        p = np.maximum(p, 1 / (1 + np.exp((d - r) / 0.6)))  # a confident blob of radius r voxels
    p = np.maximum(p, 0.3 * (rng.random(p.shape, dtype=np.float32) > 0.999))  # scattered faint specks
    tube = (np.abs(k - 0.5 * grid.shape_kji[0]) < 2) & (np.abs(j - 0.2 * grid.shape_kji[1]) < 2)  # a "vessel"
    p[tube] = 0.95
    probs = np.stack([1 - p, p])
    labels, fg = _back_to_source(probs, grid, vol, None, card, True)
    whole = geo.resample(p, grid, geo.Grid.of(vol), interpolation="linear")
    ref = remove_small_components((whole > 0.5).astype(np.uint8), card, vol.voxel_volume_mm3, whole, vol.affine[:3, :3])
    from scipy import ndimage

    assert ndimage.label(ref, structure=np.ones((3, 3, 3)))[1] >= 2  # blobs in separate boxes; the "vessel" ruled out
    assert np.array_equal(labels, ref)
    assert np.abs(fg - np.where(whole > 0.02, whole, fg)).max() < 1e-5  # probabilities above 0.02 are the same
