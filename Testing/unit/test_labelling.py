"""The labelling helpers give scipy.ndimage.label's label arrays exactly, through cc3d and through
scipy, so that every caller (largest component, first of equal ones) gets the same answer either way;
and the image-quality measures are the same numbers with cc3d on and off."""

from __future__ import annotations

import cc3d  # noqa: F401  (a declared dependency: its absence is a failure, not a skip)
import numpy as np
import pytest
from scipy import ndimage as ndi

from MedImgAILib import labelling
from MedImgAILib.labelling import label, label_faces, use_cc3d
from MedImgAILib.protocols.quality import fill_holes2d, measure_ct
from Testing.protocols.test_quality_pinned import CASES

@pytest.fixture(params=[True, False], ids=["cc3d", "scipy"])
def backend(request):
    before = use_cc3d(request.param)
    assert labelling._USE_CC3D is request.param
    yield request.param
    use_cc3d(before)


def _random_masks(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        shape = tuple(int(x) for x in rng.integers(1, 30, size=3))
        yield rng.random(shape) < rng.uniform(0.05, 0.85)


def test_face_labels_are_scipys(backend):
    for m in _random_masks(1):
        for x in (m, m[0], m[:, ::2, 1:]):  # 3D, 2D, a strided view
            want, n = ndi.label(x)
            got, k = label_faces(x)
            assert k == n and got.dtype == np.intp and np.array_equal(got, want)


def test_edge_and_corner_labels_are_scipys(backend):
    for m in _random_masks(3):
        for x in (m, m[0]):
            for conn in range(1, x.ndim + 1):
                want, n = ndi.label(x, structure=ndi.generate_binary_structure(x.ndim, conn))
                got, k = label(x, conn)
                assert k == n and np.array_equal(got, want), (x.shape, conn)


def test_fill_holes2d_with_either_backend(backend):
    rng = np.random.default_rng(7)
    m = ndi.binary_opening(rng.random((5, 40, 44)) < 0.6, structure=np.ones((1, 2, 2)))
    assert np.array_equal(fill_holes2d(m), np.stack([ndi.binary_fill_holes(s) for s in m]))


@pytest.mark.parametrize("name", ["chest_float_f2", "chest_clipped_int16", "chest_int16_f3"])
def test_image_quality_is_the_same_with_and_without_cc3d(name):
    vol = CASES[name]()
    before = use_cc3d(True)
    try:
        fast = measure_ct(vol)
        use_cc3d(False)
        plain = measure_ct(vol)
    finally:
        use_cc3d(before)
    assert fast == plain
