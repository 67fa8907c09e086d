"""The card's shape rule removes tubular components (vessels) and keeps round ones (nodules)."""

from __future__ import annotations

import numpy as np

from MedImgAILib.inference.runners import component_elongation, remove_small_components
from MedImgAILib.models.registry import get_card


def _card(max_elongation: float):
    card = get_card("ct-lung-nodule")
    pp = card.postprocessing_spec.model_copy(update={"max_elongation": max_elongation})
    return card.model_copy(update={"postprocessing_spec": pp})


def test_tube_dropped_sphere_and_thick_slice_nodule_kept():
    # anisotropic grid as on a 5 mm series: 0.7 mm pixels, 5 mm slices
    axes = np.diag([0.7, 0.7, 5.0])  # IJK -> LPS (i, j, k columns)
    k, j, i = np.mgrid[0:12, 0:120, 0:120]
    x, y, z = i * 0.7, j * 0.7, k * 5.0
    labels = np.zeros(k.shape, np.uint8)
    # a 12 mm nodule centred at (20, 20, 30) mm
    labels[(x - 20) ** 2 + (y - 20) ** 2 + (z - 30) ** 2 <= 6 ** 2] = 1
    # a 4 mm vessel running 50 mm in-plane
    labels[((y - 60) ** 2 + (z - 30) ** 2 <= 2.5 ** 2) & (x > 20) & (x < 70)] = 1
    sphere = labels.copy()
    sphere[:, 70:, :] = 0
    tube = labels.copy()
    tube[:, :70, :] = 0
    assert component_elongation(np.argwhere(sphere), axes) < 1.5
    assert component_elongation(np.argwhere(tube), axes) > 3.0
    vox = float(np.prod(np.diag(axes)))
    out = remove_small_components(labels.copy(), _card(1.8), vox, voxel_axes_mm=axes)
    assert np.array_equal(out, sphere)
    # the rule is off without the geometry or with max_elongation 0
    assert np.array_equal(remove_small_components(labels.copy(), _card(0.0), vox, voxel_axes_mm=axes), labels)
    assert np.array_equal(remove_small_components(labels.copy(), _card(1.8), vox), labels)
