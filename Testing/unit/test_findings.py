"""Findings from label maps: given a lesion of known geometry, the measurements a radiologist gets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedImgAILib.findings import (
    FindingsError,
    LabelSpec,
    axial_axes,
    extract_findings,
    interval_days,
    match_prior,
    volume_doubling_time_days,
)
from MedImgAILib.results import AnalysisResult, Category, Finding
from MedImgAILib.volume import Volume, affine_from_geometry
from Testing.unit._analytic_shapes import Ellipsoid, halfway_mask, load_ct_series, lung_image

# Nodules >= 6 mm at <= 1.25 mm slices: the accuracy target is volume within 5 %, mean
# diameter within 0.7 mm. Centres are deliberately off the voxel grid.
CASES = [
    ((3.0, 3.0, 3.0), 0.0, (0.7, 0.7, 1.25)),  # 6 mm sphere, the smallest size the target covers
    ((4.0, 2.6, 3.2), 0.6, (0.7, 0.7, 1.25)),  # elongated, rotated in plane
    ((5.0, 5.0, 5.0), 0.0, (0.6, 0.6, 1.0)),
    ((7.5, 5.0, 6.0), 1.1, (0.78, 0.78, 1.25)),
    ((10.0, 9.0, 8.0), 0.3, (0.7, 0.7, 1.25)),  # 20 mm
]


def test_partial_volume_volume_is_exact_where_the_voxel_count_is_not():
    """A 6 mm sphere: the voxel count of the half-way mask is a few percent off, the partial-volume
    sum of the same mask's edge is within 1 %."""
    e = Ellipsoid(center_lps=(0.21, -0.33, 0.4), semi_axes_mm=(3.0, 3.0, 3.0))
    img = lung_image([e], shape_kji=(16, 24, 24), origin=(-8.0, -8.0, -10.0))
    labels = halfway_mask(img, 30.0)
    (pv,) = extract_findings(labels, img)
    (count,) = extract_findings(labels, img, partial_volume=False)
    assert pv.volume_mm3 == pytest.approx(e.volume_mm3, rel=0.01)
    assert count.volume_mm3 == pytest.approx(labels.array.sum() * labels.voxel_volume_mm3)


@pytest.mark.parametrize("semi,rot,spacing", CASES)
@pytest.mark.parametrize("with_image", [True, False], ids=["hu-outline", "binary-outline"])
def test_measurements_match_analytic_truth(semi, rot, spacing, with_image):
    e = Ellipsoid(center_lps=(0.37, -0.81, 0.29), semi_axes_mm=semi, hu=30.0, rotation_z_rad=rot)
    n_in = int(2 * (max(semi) + 4) / min(spacing[:2]))
    n_k = int(2 * (max(semi) + 4) / spacing[2])
    half = [-(n_in * spacing[0]) / 2, -(n_in * spacing[1]) / 2, -(n_k * spacing[2]) / 2]
    img = lung_image([e], spacing=spacing, shape_kji=(n_k, n_in, n_in), origin=half)
    labels = halfway_mask(img, e.hu)
    (f,) = extract_findings(labels, img if with_image else None)

    assert f.volume_mm3 == pytest.approx(e.volume_mm3, rel=0.05)
    z = float(img.ijk_to_lps([0, 0, f.slice_index])[2])
    long_t, short_t = e.axial_section_diameters(z)
    assert abs(f.mean_diameter_mm - (long_t + short_t) / 2) < 0.7
    # the slice where the lesion is largest is at most half a slice from the centre
    full_mean = max(semi[0], semi[1]) + min(semi[0], semi[1])
    assert abs(f.mean_diameter_mm - full_mean) < 0.7
    assert np.allclose(f.center_lps_mm, e.center_lps, atol=0.15)
    if with_image:  # the sub-voxel outline from partial-volume HU is much tighter than required
        assert f.long_axis_mm == pytest.approx(long_t, abs=0.3)
        assert f.short_axis_mm == pytest.approx(short_t, abs=0.3)
        assert f.max_3d_diameter_mm == pytest.approx(2 * max(semi), abs=0.4)
    else:
        assert f.max_3d_diameter_mm == pytest.approx(2 * max(semi), abs=1.2)
    # line end points lie on the measured slice and have the measured lengths
    la, lb = np.array(f.long_axis_lps_mm)
    sa, sb = np.array(f.short_axis_lps_mm)
    assert np.linalg.norm(lb - la) == pytest.approx(f.long_axis_mm)
    assert np.linalg.norm(sb - sa) == pytest.approx(f.short_axis_mm)
    assert abs(np.dot((lb - la) / f.long_axis_mm, (sb - sa) / f.short_axis_mm)) < 1e-6
    for p in (la, lb, sa, sb):
        assert p[2] == pytest.approx(z)
    assert f.type == ("solid" if with_image else "")  # type needs the HU


def test_measurements_do_not_depend_on_axis_order_or_flips():
    """A series stored feet-first with a flipped row direction measures the same."""
    e = Ellipsoid(center_lps=(0.3, 0.2, -0.4), semi_axes_mm=(4.5, 3.0, 3.5), rotation_z_rad=0.4)
    d = np.diag([-1.0, 1.0, -1.0])
    a = lung_image([e], shape_kji=(20, 30, 30), origin=(-10.0, -10.0, -12.0))
    b = lung_image([e], shape_kji=(20, 30, 30), origin=(10.0, -10.0, 12.0), direction=d)
    fa = extract_findings(halfway_mask(a, 30.0), a)[0]
    fb = extract_findings(halfway_mask(b, 30.0), b)[0]
    assert fb.volume_mm3 == pytest.approx(fa.volume_mm3, rel=0.03)
    assert fb.mean_diameter_mm == pytest.approx(fa.mean_diameter_mm, abs=0.2)
    assert np.allclose(fb.center_lps_mm, fa.center_lps_mm, atol=0.1)


def test_long_axis_is_the_max_feret_diameter_of_an_l_shape():
    """Known 2D truth: an L of 10x2 + 2x8 pixels at 1 mm spacing; the outline at 0.5 runs along the
    pixel edges' midpoints, so the farthest outline points are opposite corners of the L."""
    m = np.zeros((14, 14), dtype=bool)
    m[2:12, 2:4] = True  # vertical bar, rows 2..11
    m[10:12, 2:12] = True  # horizontal bar, cols 2..11
    ax = axial_axes(m, 0, np.eye(4))
    # outline corners are at pixel centres +/- 0.5 along one axis only (marching squares cuts the
    # corner pixels diagonally), e.g. (row 1.5, col 2) and (row 11, col 11.5)
    assert ax.long_mm == pytest.approx(math.hypot(11 - 1.5, 11.5 - 2), abs=0.05)
    assert 0 < ax.short_mm < ax.long_mm


def _two_nodules():
    big = Ellipsoid(center_lps=(-8.0, 0.0, 0.0), semi_axes_mm=(4.0, 4.0, 4.0))
    small = Ellipsoid(center_lps=(9.0, 2.0, 0.5), semi_axes_mm=(1.4, 1.4, 1.4))
    img = lung_image([big, small], shape_kji=(24, 48, 48), origin=(-17.0, -17.0, -15.0))
    return img, big, small


def test_components_are_ordered_largest_first_and_small_ones_dropped():
    img, big, small = _two_nodules()
    labels = halfway_mask(img, 30.0)
    fs = extract_findings(labels, img)
    assert [f.id for f in fs] == ["F1", "F2"]
    assert fs[0].volume_mm3 > fs[1].volume_mm3
    assert np.allclose(fs[1].center_lps_mm, small.center_lps, atol=0.3)
    # the model card's minimum size (here 50 mm3 > the 11.5 mm3 of the small one)
    fs = extract_findings(labels, img, label_specs=[LabelSpec(value=1, name="nodule", min_size_mm3=50.0)])
    assert len(fs) == 1 and fs[0].label == "nodule"
    assert extract_findings(labels, img, min_size_mm3=1e6) == []


def test_probability_is_the_max_or_mean_inside_the_component():
    img, _big, _small = _two_nodules()
    labels = halfway_mask(img, 30.0)
    prob = np.where(labels.array > 0, 0.6, 0.0).astype(np.float32)
    k, j, i = np.argwhere(labels.array > 0)[0]
    prob[k, j, i] = 0.97
    pv = img.with_array(prob)
    f_max = extract_findings(labels, img, pv)
    f_mean = extract_findings(labels, img, pv, probability_reduce="mean")
    assert {round(f.probability, 6) for f in f_max} == {0.97, 0.6}
    assert all(0.6 <= f.probability < 0.97 for f in f_mean)


def test_nodule_type_solid_part_solid_ground_glass():
    ggn = Ellipsoid(center_lps=(-10.0, 0.0, 0.0), semi_axes_mm=(5.0, 5.0, 5.0), hu=-600.0)
    ps_outer = Ellipsoid(center_lps=(10.0, 0.0, 0.0), semi_axes_mm=(6.0, 6.0, 6.0), hu=-600.0)
    ps_core = Ellipsoid(center_lps=(10.0, 0.0, 0.0), semi_axes_mm=(2.5, 2.5, 2.5), hu=20.0)
    img = lung_image([ggn, ps_outer, ps_core], shape_kji=(20, 60, 60), origin=(-21.0, -21.0, -12.0))
    labels = halfway_mask(img, -600.0)
    fs = sorted(extract_findings(labels, img), key=lambda f: f.center_lps_mm[0])
    assert [f.type for f in fs] == ["ground-glass", "part-solid"]
    # the solid core's own mean diameter (5 mm), measured the same way as the nodule's
    assert fs[1].solid_core_mean_diameter_mm == pytest.approx(5.0, abs=0.9)
    assert fs[0].solid_core_mean_diameter_mm is None
    assert fs[0].mean_hu == pytest.approx(-600, abs=60)


def test_side_from_the_body_midline():
    """A body (soft tissue ellipse) centred at x=+5 mm: a nodule at x=+2 is on the patient's right."""
    body = Ellipsoid(center_lps=(5.0, 0.0, 0.0), semi_axes_mm=(40.0, 25.0, 100.0), hu=40.0, supersample=1)
    lung_r = Ellipsoid(center_lps=(-12.0, 0.0, 0.0), semi_axes_mm=(14.0, 16.0, 100.0), hu=-850.0, supersample=1)
    lung_l = Ellipsoid(center_lps=(22.0, 0.0, 0.0), semi_axes_mm=(14.0, 16.0, 100.0), hu=-850.0, supersample=1)
    n_r = Ellipsoid(center_lps=(-10.0, 0.0, 0.0), semi_axes_mm=(3.0, 3.0, 3.0))
    n_l = Ellipsoid(center_lps=(22.0, 3.0, 0.0), semi_axes_mm=(3.0, 3.0, 3.0))
    img = lung_image([body, lung_r, lung_l, n_r, n_l], spacing=(1.0, 1.0, 1.25), shape_kji=(12, 60, 100),
                     origin=(-45.0, -30.0, -7.0), background_hu=-1000.0)
    nodules = np.zeros(img.array.shape, dtype=np.uint8)
    for n in (n_r, n_l):
        ijk = np.round(img.lps_to_ijk(n.center_lps)).astype(int)
        region = np.zeros_like(nodules)
        region[ijk[2] - 4:ijk[2] + 5, ijk[1] - 6:ijk[1] + 7, ijk[0] - 6:ijk[0] + 7] = 1
        nodules |= (region.astype(bool) & (img.array > -410)).astype(np.uint8)
    fs = sorted(extract_findings(img.with_array(nodules), img), key=lambda f: f.center_lps_mm[0])
    assert [f.side for f in fs] == ["right", "left"]
    assert [f.site_code.meaning for f in fs] == ["Right lung", "Left lung"]


def test_label_map_on_another_grid_is_refused():
    img, _b, _s = _two_nodules()
    other = Volume(array=np.zeros((5, 5, 5), np.uint8), affine=np.eye(4))
    with pytest.raises(FindingsError, match="does not match the label map grid"):
        extract_findings(other, img)


def test_prior_matching_reports_growth_and_volume_doubling_time(tmp_path):
    prior = Finding(id="F1", label="nodule", center_lps_mm=[10.0, 0.0, 0.0], volume_mm3=100.0,
                    mean_diameter_mm=6.0, long_axis_mm=6.5, tracking_uid="1.2.3.9", type="solid",
                    categories=[Category(system="Lung-RADS", version="v2022", value="3")])
    far = Finding(id="F2", label="nodule", center_lps_mm=[-60.0, 0.0, 0.0], volume_mm3=50.0, mean_diameter_mm=5.0)
    path = AnalysisResult(study_instance_uid="1.2.3", findings=[prior, far]).write(tmp_path / "findings.json")
    cur = [
        Finding(id="F1", label="nodule", center_lps_mm=[12.0, 1.0, 0.0], volume_mm3=200.0, mean_diameter_mm=7.6,
                long_axis_mm=8.0),
        Finding(id="F2", label="nodule", center_lps_mm=[60.0, 0.0, 0.0], volume_mm3=40.0, mean_diameter_mm=4.0),
    ]
    days = interval_days("20250101", "2025-12-27")
    assert days == 360.0
    assert match_prior(cur, path, interval_days=days) == 1
    g = cur[0].prior
    assert g["finding_id"] == "F1" and g["study_instance_uid"] == "1.2.3" and g["tracking_uid"] == "1.2.3.9"
    assert g["mean_diameter_change_mm"] == pytest.approx(1.6)
    assert g["volume_change_mm3"] == pytest.approx(100.0)
    assert g["volume_change_percent"] == pytest.approx(100.0)
    assert g["volume_doubling_time_days"] == pytest.approx(360.0)  # doubled in 360 days
    assert g["distance_mm"] == pytest.approx(math.sqrt(5))
    assert g["mean_diameter_mm"] == 6.0 and g["type"] == "solid" and g["categories_by_system"] == {"Lung-RADS": "3"}
    assert cur[1].prior is None  # 120 mm away: not the same nodule


def test_volume_doubling_time_edge_cases():
    assert volume_doubling_time_days(100, 100, 90) is None
    assert volume_doubling_time_days(0, 100, 90) is None
    assert volume_doubling_time_days(100, 50, 100) == pytest.approx(-100.0)
    assert volume_doubling_time_days(100, 400, 100) == pytest.approx(50.0)


def test_real_ct_liver_label_map(ct3slice_dir):
    """The real GE CT with its real liver segmentation: one organ finding, HU of liver tissue."""
    import SimpleITK as sitk

    ct, _dss = load_ct_series(sorted(ct3slice_dir.glob("0?.dcm")))
    liver = Volume.from_sitk(sitk.ReadImage(str(ct3slice_dir / "liver_seg.nrrd")))
    assert liver.array.shape == ct.array.shape and np.allclose(liver.affine, ct.affine, atol=1e-3)
    spec = LabelSpec(value=1, name="Liver", is_lung_lesion=False)
    fs = extract_findings(liver.with_array(liver.array.astype(np.uint8)), ct, label_specs=[spec], partial_volume=False)
    assert sum(f.volume_mm3 for f in fs) == pytest.approx(107098 * 0.810547**2 * 1.0, rel=1e-6)
    f = fs[0]  # the largest component is the liver itself
    assert 20 < f.mean_hu < 200  # liver parenchyma
    assert f.long_axis_mm > 100 and f.type == ""


def test_fill_holes_by_labelling_is_binary_fill_holes():
    """fill_holes2d of a 2D mask (one labelling; the findings' pleural-contact fills) gives scipy's
    binary_fill_holes mask exactly: random masks of several densities, holes touching the border and
    not, a full and an empty slice."""
    from scipy import ndimage

    from MedImgAILib.masks import fill_holes2d

    rng = np.random.default_rng(7)
    masks = [rng.random((37, 53)) < p for p in (0.3, 0.5, 0.6, 0.75)]
    ring = np.zeros((20, 20), bool)
    ring[2:15, 2:15] = True
    ring[4:13, 4:13] = False
    ring[0:3, 8] = True  # a spur to the border: the hole stays a hole
    masks += [ring, np.ones((5, 6), bool), np.zeros((5, 6), bool)]
    for m in masks:
        assert np.array_equal(fill_holes2d(m), ndimage.binary_fill_holes(m))


def test_foreground_slabs_cover_every_component_in_k_order():
    from MedImgAILib.findings.extract import foreground_box, foreground_slabs

    arr = np.zeros((30, 20, 25), np.uint8)
    arr[2:5, 3:6, 4:9] = 1
    arr[5, 10, 20] = 2  # same slab (touching slices)
    arr[12:14, 15:18, 1:3] = 1
    arr[29, 0, 0] = 3
    slabs = foreground_slabs(arr)
    assert [(s[0].start, s[0].stop) for s in slabs] == [(2, 6), (12, 14), (29, 30)]
    assert slabs[0][1:] == (slice(3, 11), slice(4, 21))
    covered = np.zeros(arr.shape, bool)
    for s in slabs:
        covered[s] = True
    assert not arr[~covered].any()
    assert foreground_box(arr) == (slice(2, 30), slice(0, 18), slice(0, 21))
    assert foreground_slabs(np.zeros((4, 4, 4), np.int16)) == [] and foreground_box(np.zeros((4, 4, 4))) is None


def test_body_midline_from_row_ends_is_the_midline_of_every_pixel():
    """The midline from each row's first and last body pixel equals the one from all body pixels,
    for an oblique in-plane direction too (x then depends on both i and j)."""
    from MedImgAILib.findings.extract import body_midline_x_lps

    rng = np.random.default_rng(3)
    a = 0.4
    c, s_ = math.cos(a), math.sin(a)
    oblique = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])  # columns: i, j, k axes in LPS
    for affine in (affine_from_geometry((-40.0, -30.0, 5.0), (0.7, 0.7, 1.25), np.eye(3)),
                   affine_from_geometry((-40.0, -30.0, 5.0), (0.8, 0.6, 2.0), oblique)):
        img = Volume(array=np.full((3, 40, 50), -1000, np.int16), affine=affine)
        body = np.zeros((40, 50), bool)
        body[5:35, 8:45] = rng.random((30, 37)) < 0.7
        j, i = np.nonzero(body)
        ijk = np.stack([i, j, np.full_like(i, 1), np.ones_like(i)], axis=1).astype(np.float64)
        x = (ijk @ affine.T)[:, 0]
        assert body_midline_x_lps(img, 1, body=body) == (x.min() + x.max()) / 2.0


def test_farthest_pair_matches_the_full_distance_array():
    """_farthest_pair's coordinate-by-coordinate sums are the same numbers as the full (n, n, d)
    difference array summed over d: the same distance and the same pair, ties included (points
    on a half-voxel grid, as binary outlines give, tie often)."""
    from MedImgAILib.findings.measure import _farthest_pair

    rng = np.random.default_rng(11)
    sets = [rng.normal(size=(n, d)) * 23.7 for n in (2, 17, 400) for d in (2, 3)]
    sets += [rng.integers(0, 12, size=(300, 3)) * 0.5 * np.array([0.7, 0.7, 1.25]) for _ in range(3)]
    for p in sets:
        d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        r, c = divmod(int(np.argmax(d2)), len(p))
        assert _farthest_pair(p) == (float(np.sqrt(d2[r, c])), r, c)


def test_cross3_is_np_cross():
    from MedImgAILib.findings.measure import _cross3

    rng = np.random.default_rng(5)
    for _ in range(2000):
        a, b = rng.normal(size=3) * rng.uniform(0.01, 100), rng.normal(size=3)
        assert np.array_equal(_cross3(a, b), np.cross(a, b))


def test_mask_shells_are_the_iterated_morphology():
    """mask_shells' one-step dilations give binary_dilation(iterations=n)'s sets, so the partial-volume
    measures that share them are unchanged."""
    from scipy import ndimage

    from MedImgAILib.findings.extract import mask_shells

    rng = np.random.default_rng(4)
    for density in (0.05, 0.3, 0.6):
        m = ndimage.binary_opening(rng.random((14, 17, 15)) < density)
        m[0, 0, :4] = True  # touching the crop's border
        sh = mask_shells(m, rng.normal(size=m.shape) * 100)
        assert np.array_equal(sh.inner, ndimage.binary_erosion(m))
        assert np.array_equal(sh.dil1, ndimage.binary_dilation(m))
        ring = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m, iterations=2)
        assert np.array_equal(sh.ring, ring)


def test_largest_axial_axes_equals_measuring_every_candidate_slice():
    """The slice chosen with the long-axis bound (largest area first, short axis skipped where the
    long axis already loses) is the one measuring every candidate slice in k order picks."""
    from scipy import ndimage

    from MedImgAILib.findings.extract import largest_axial_axes

    rng = np.random.default_rng(9)
    aff = affine_from_geometry((-40.0, -30.0, 5.0), (0.7, 0.7, 1.25), np.eye(3))
    for trial in range(12):
        m = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((9, 24, 26)), 2.0) > 0.5)
        if trial % 3 == 0:  # an exactly symmetric shape: equal areas and means on mirrored slices
            m = np.zeros((9, 24, 26), bool)
            for k, r in enumerate((2, 4, 5, 6, 6.3, 6, 5, 4, 2)):
                jj, ii = np.mgrid[0:24, 0:26]
                m[k] = (jj - 12) ** 2 + (ii - 13) ** 2 <= r * r
        if not m.any():
            continue
        areas = m.reshape(9, -1).sum(axis=1)
        best = None
        for kk in np.nonzero(areas >= 0.8 * areas.max())[0]:
            ax = axial_axes(m[kk], int(kk) + 3, aff, (2, 1))
            if best is None or ax.mean_mm > best[1].mean_mm:
                best = (int(kk) + 3, ax)
        got = largest_axial_axes(m, aff, (3, 2, 1))
        assert got[0] == best[0] and got[1] == best[1]
