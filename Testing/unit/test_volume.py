"""Volume geometry: the one place the IJK->LPS convention is pinned down."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedImgAILib.volume import Volume, affine_from_geometry


def oblique_volume() -> Volume:
    theta = np.deg2rad(20)
    direction = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]]
    )
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # k, j, i
    return Volume(array=arr, affine=affine_from_geometry((10, -20, 30), (0.7, 0.8, 2.5), direction))


def test_geometry_properties_round_trip_through_the_affine():
    v = oblique_volume()
    assert v.shape_ijk == (6, 5, 4)
    np.testing.assert_allclose(v.spacing, (0.7, 0.8, 2.5))
    np.testing.assert_allclose(v.origin, (10, -20, 30))
    np.testing.assert_allclose(v.ijk_to_lps([0, 0, 0]), (10, -20, 30))
    p = v.ijk_to_lps([2, 3, 1])
    np.testing.assert_allclose(v.lps_to_ijk(p), [2, 3, 1], atol=1e-9)
    assert v.voxel_volume_mm3 == pytest.approx(0.7 * 0.8 * 2.5)


def test_sitk_agrees_on_physical_points():
    v = oblique_volume()
    img = v.to_sitk()
    for ijk in ([0, 0, 0], [5, 4, 3], [1, 2, 3]):
        np.testing.assert_allclose(img.TransformIndexToPhysicalPoint(ijk), v.ijk_to_lps(ijk), atol=1e-9)
        # array order [k, j, i]
        assert sitk.GetArrayViewFromImage(img)[ijk[2], ijk[1], ijk[0]] == v.array[ijk[2], ijk[1], ijk[0]]
    back = Volume.from_sitk(img)
    np.testing.assert_allclose(back.affine, v.affine, atol=1e-9)


def test_nifti_round_trip_flips_to_ras_and_back():
    v = oblique_volume()
    nii = v.to_nifti()
    # NIfTI voxel (i, j, k) is LPS point with x, y negated
    ras = nii.affine @ np.array([2, 3, 1, 1.0])
    lps = v.ijk_to_lps([2, 3, 1])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]])
    assert nii.get_fdata()[2, 3, 1] == v.array[1, 3, 2]
    back = Volume.from_nifti(nii)
    np.testing.assert_allclose(back.affine, v.affine)
    np.testing.assert_array_equal(back.array, v.array)


def test_with_array_keeps_grid_and_rejects_other_shapes():
    v = oblique_volume()
    lab = v.with_array(np.zeros(v.array.shape, np.uint8))
    np.testing.assert_allclose(lab.affine, v.affine)
    with pytest.raises(ValueError, match="does not match"):
        v.with_array(np.zeros((1, 2, 3)))
