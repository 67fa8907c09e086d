"""Series loading: given real and synthesized DICOM folders, this is the Volume a user gets.

Reference for geometry: SimpleITK's ImageSeriesReader (GDCM) on the same files, with GDCM's own file
ordering. Reference for pixel values: SimpleITK's array (it applies the same rescale) or the values the
synthesizer wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from MedImgAILib.dicom import load_series, load_volume, scan, scan_tree
from MedImgAILib.errors import DicomInputError, GeometryError, MalformedDicomError, MissingPixelDataError
from Testing.dicom_synth import write_enhanced_ct, write_series

sitk.ProcessObject_SetGlobalWarningDisplay(False)


def sitk_series(folder: Path, series_uid: str) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    files = r.GetGDCMSeriesFileNames(str(folder), series_uid)
    assert len(files) > 1, "SimpleITK found no multi-slice series"
    r.SetFileNames(files)
    return r.Execute()


def assert_same_geometry_as_sitk(vol, img: sitk.Image, *, values: bool = True) -> None:
    assert vol.shape_ijk == img.GetSize()
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(vol.direction.ravel(), img.GetDirection(), atol=1e-5)
    if values:
        np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img).astype(vol.array.dtype))


@pytest.fixture(scope="module")
def dicomdirtests(pydicom_testdata: Path) -> Path:
    return pydicom_testdata / "dicomdirtests"


# --- real files -----------------------------------------------------------------------------------
def test_real_ge_ct_matches_simpleitk_and_reports_thickness(ct3slice_dir: Path) -> None:
    result = scan_tree(ct3slice_dir)
    images = [r for r in result.series if r.is_image]
    assert len(images) == 1
    seg = [r for r in result.series if not r.is_image]
    assert seg and seg[0].non_image_kind == "Segmentation"  # liver_seg.dcm is recognised, not stacked
    skipped = {Path(p).name for p, _ in result.skipped}
    assert {"LICENSE", "SOURCE.md", "liver_seg.nrrd", "spine_seg.nrrd"} <= skipped

    vol = load_series(images[0])
    img = sitk_series(ct3slice_dir, vol.series_instance_uid)
    assert_same_geometry_as_sitk(vol, img)
    assert vol.array.dtype == np.int16  # HU, exactly, in half the memory of float32
    assert vol.modality == "CT"
    # instance numbers run opposite to z: the file order along increasing z is 03, 02, 01
    assert [Path(f).name for f in vol.extra["source_files"]] == ["03.dcm", "02.dcm", "01.dcm"]
    assert vol.extra["instance_number_order"] == "decreasing"
    by_file = {Path(f).name: pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in vol.extra["source_files"]}
    assert vol.source_sop_instance_uids == [by_file["03.dcm"], by_file["02.dcm"], by_file["01.dcm"]]
    z = [vol.ijk_to_lps([0, 0, k])[2] for k in range(3)]
    assert z == sorted(z)
    assert vol.array.min() == -3024  # air outside the FOV, in HU
    assert any("SliceThickness 1.25 mm differs from the 1 mm spacing" in w for w in vol.warnings)
    assert vol.metadata is not None and vol.metadata.acquisition.slice_thickness_mm.value == 1.25


def test_ct5n_five_slices_match_simpleitk(dicomdirtests: Path) -> None:
    folder = dicomdirtests / "98892001" / "CT5N"
    vol = load_volume(folder)
    assert_same_geometry_as_sitk(vol, sitk_series(folder, vol.series_instance_uid))
    assert vol.shape_ijk == (16, 16, 5)
    assert vol.warnings == []
    pos = vol.extra["slice_positions_along_normal_mm"]
    assert pos == sorted(pos) and np.allclose(np.diff(pos), 2.5)


def test_ct2_gap_is_reported_with_positions_and_matches_simpleitk(dicomdirtests: Path) -> None:
    folder = dicomdirtests / "77654033" / "CT2"
    vol = load_volume(folder)
    assert_same_geometry_as_sitk(vol, sitk_series(folder, vol.series_instance_uid))
    gap = [w for w in vol.warnings if "uneven slice spacing" in w]
    assert len(gap) == 1
    assert vol.series_instance_uid in gap[0]
    assert "202.5 mm between -99.48 and 103.02" in gap[0]
    # one gap does not also read as a thickness mismatch: the typical step equals SliceThickness 1.25
    assert not any("SliceThickness" in w for w in vol.warnings)


def test_whole_dicomdir_tree_groups_series_and_skips_non_dicom(dicomdirtests: Path) -> None:
    result = scan_tree(dicomdirtests)
    reasons = {Path(p).name: r for p, r in result.skipped}
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    assert "not a DICOM file" in reasons["README.txt"]
    keys = [r.key for r in result.series]
    assert len(keys) == len(set(keys))
    ct5 = [r for r in result.series if r.series_instance_uid.endswith(".16302.0.6")]
    assert len(ct5) == 1 and len(ct5[0].slices) == 5
    # every multi-slice image series agrees with SimpleITK
    multi = [r for r in result.series if r.is_image and len(r.slices) > 1 and r.instances[0].has_pixel_data]
    assert len(multi) == 2  # CT5N and CT2
    for ref in multi:
        vol = load_series(ref)
        folder = Path(ref.files[0]).parent
        assert_same_geometry_as_sitk(vol, sitk_series(folder, ref.series_instance_uid))


def test_mr_pilots_in_mixed_orientations_are_split_and_reported(dicomdirtests: Path) -> None:
    refs = [r for r in scan(dicomdirtests / "98892003" / "MR2")]
    by_uid: dict[str, list] = {}
    for r in refs:
        by_uid.setdefault(r.series_instance_uid, []).append(r)
    (uid, parts), *_ = [(u, p) for u, p in by_uid.items() if len(p) == 3]
    assert [p.key for p in parts] == [f"{uid}#1", f"{uid}#2", f"{uid}#3"]
    for p in parts:
        assert any("mixes 3 orientations/sizes and was split" in w for w in p.warnings)
    normals = {tuple(np.round(load_series(p).direction[:, 2], 3)) for p in parts}
    assert len(normals) == 3  # axial, sagittal and coronal pilots
    # asking for the series without a part loads the largest part and says so
    vol = load_volume(dicomdirtests / "98892003" / "MR2", series_uid=uid)
    assert any("was split into 3 parts" in w for w in vol.warnings)
    vol2 = load_volume(dicomdirtests / "98892003" / "MR2", series_uid=f"{uid}#2")
    assert vol2.extra["series_part"] == 2


def test_header_only_instances_raise_missing_pixel_data(dicomdirtests: Path) -> None:
    with pytest.raises(MissingPixelDataError, match=r"series 1\.2\.826\.0\.1\.3680043\.8\.498\.7305.*50 of 50 slice"):
        load_volume(dicomdirtests / "TINY_ALPHA")


# --- transfer syntaxes ----------------------------------------------------------------------------
MR_SMALL_VARIANTS = [
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_mr_small_in_every_transfer_syntax_gives_the_same_volume(pydicom_testdata: Path, name: str) -> None:
    ref = load_volume(pydicom_testdata / "MR_small.dcm")
    vol = load_volume(pydicom_testdata / name)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine)
    img = sitk.ReadImage(str(pydicom_testdata / name))
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))


@pytest.mark.parametrize(
    "name, tol",
    # lossy JPEG: two IDCT implementations may differ by one grey level
    [("693_J2KI.dcm", 0), ("J2K_pixelrep_mismatch.dcm", 0), ("JPGExtended.dcm", 1), ("JPEG-lossy.dcm", 1)],
)
def test_compressed_ct_files_decode_like_gdcm(pydicom_testdata: Path, name: str, tol: int) -> None:
    vol = load_volume(pydicom_testdata / name)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(pydicom_testdata / name))).reshape(vol.array.shape)
    np.testing.assert_allclose(vol.array, ref, atol=tol, rtol=0)


def test_ct_small_is_in_hu(pydicom_testdata: Path) -> None:
    vol = load_volume(pydicom_testdata / "CT_small.dcm")
    ds = pydicom.dcmread(pydicom_testdata / "CT_small.dcm")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[0], expected)


def test_compressed_multislice_series_matches_simpleitk(tmp_path: Path) -> None:
    for ts in (RLELossless, ImplicitVRLittleEndian):
        s = write_series(tmp_path / ts.name.replace(" ", "_"), size=(12, 10, 6), transfer_syntax=ts)
        vol = load_volume(s.folder)
        assert_same_geometry_as_sitk(vol, sitk_series(s.folder, s.series_uid))
        np.testing.assert_array_equal(vol.array, s.values)


# --- malformed files ------------------------------------------------------------------------------
def test_truncated_file_names_series_and_position(pydicom_testdata: Path) -> None:
    with pytest.raises(MalformedDicomError, match=r"truncated file for the slice at LPS \(-83\.91, -91\.2, 6\.64\).*8130 of 8192"):
        load_volume(pydicom_testdata / "MR_truncated.dcm")


def test_truncated_slice_in_a_series(tmp_path: Path) -> None:
    s = write_series(tmp_path / "s", size=(16, 16, 4))
    data = s.files[2].read_bytes()
    s.files[2].write_bytes(data[:-100])
    with pytest.raises(MalformedDicomError, match=f"series {s.series_uid}: truncated file"):
        load_volume(s.folder)


def test_files_that_are_not_usable_dicom_are_skipped_with_a_reason(pydicom_testdata: Path, tmp_path: Path) -> None:
    for name in ("no_meta.dcm", "rtplan_truncated.dcm", "meta_missing_tsyntax.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_testdata / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "empty").write_bytes(b"")
    result = scan_tree(tmp_path)
    reasons = dict((Path(p).name, r) for p, r in result.skipped)
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "empty" in reasons and "no_meta.dcm" in reasons
    assert reasons["meta_missing_tsyntax.dcm"] == "DICOM file without SeriesInstanceUID"
    assert [r.modality for r in result.series if r.is_image] == ["MR"]
    plans = [r for r in result.series if not r.is_image]
    assert plans and plans[0].non_image_kind == "RT Plan"


def test_missing_pixel_data_in_one_slice(tmp_path: Path) -> None:
    s = write_series(tmp_path / "s", size=(8, 8, 4))
    ds = pydicom.dcmread(s.files[1])
    del ds.PixelData
    ds.save_as(s.files[1])
    with pytest.raises(MissingPixelDataError, match=rf"series {s.series_uid}: 1 of 4 slice\(s\) have no Pixel Data.*LPS \(-100, -90, 32\.5\)"):
        load_volume(s.folder)


def test_color_images_are_refused_with_a_reason(pydicom_testdata: Path) -> None:
    with pytest.raises(DicomInputError, match="3 samples per pixel"):
        load_volume(pydicom_testdata / "SC_rgb_rle.dcm")


# --- synthesized geometry -------------------------------------------------------------------------
def test_duplicate_positions_are_an_error_naming_the_position(tmp_path: Path) -> None:
    pos = [(-100.0, -90.0, 30.0 + 2.5 * k) for k in range(4)] + [(-100.0, -90.0, 35.0)]
    s = write_series(tmp_path / "dup", positions=pos)
    with pytest.raises(GeometryError, match=rf"series {s.series_uid} has 1 duplicate slice position\(s\) at LPS \(-100, -90, 35\)"):
        load_volume(s.folder)


def test_gantry_tilt_is_reported_and_the_affine_follows_the_slices(tmp_path: Path) -> None:
    s = write_series(tmp_path / "tilt", size=(10, 8, 6), tilt_deg=12.0)
    vol = load_volume(s.folder)
    tilt = [w for w in vol.warnings if "tilted" in w]
    assert len(tilt) == 1 and "12.00 degrees" in tilt[0] and s.series_uid in tilt[0]
    # every slice lies exactly where its ImagePositionPatient says
    for k, p in enumerate(s.positions):
        np.testing.assert_allclose(vol.ijk_to_lps([0, 0, k]), p, atol=1e-6)
    img = sitk_series(s.folder, s.series_uid)
    # SimpleITK: same size, origin and in-plane axes, but an orthogonal k axis (it ignores the tilt)
    assert vol.shape_ijk == img.GetSize()
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction[:, :2].ravel(), np.asarray(img.GetDirection()).reshape(3, 3)[:, :2].ravel(), atol=1e-6)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img))


def test_oblique_series_matches_simpleitk(tmp_path: Path) -> None:
    # unit, orthogonal row and column cosines, neither along an axis
    s = write_series(tmp_path / "obl", size=(9, 7, 5), row=(0.8, 0.6, 0.0), col=(0.168, -0.224, -0.96))
    vol = load_volume(s.folder)
    assert vol.warnings == []
    assert_same_geometry_as_sitk(vol, sitk_series(s.folder, s.series_uid))
    np.testing.assert_array_equal(vol.array, s.values)


def test_non_orthogonal_orientation_is_an_error(tmp_path: Path) -> None:
    s = write_series(tmp_path / "skew", row=(1.0, 0.0, 0.0), col=(0.1, 0.995, 0.0))
    with pytest.raises(GeometryError, match=rf"series {s.series_uid}: .*not orthogonal \(angle 84\.\d+ degrees\)"):
        load_volume(s.folder)


def test_mixed_sizes_split_the_series(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    study = "1.2.826.0.1.3680043.8.498.2"
    write_series(tmp_path, size=(8, 8, 4), series_uid=uid, study_uid=study, name_prefix="a")
    write_series(tmp_path, size=(16, 16, 2), series_uid=uid, study_uid=study, name_prefix="b", origin=(-100, -90, 100))
    refs = scan(tmp_path)
    assert [(r.key, len(r.slices)) for r in refs] == [(f"{uid}#1", 4), (f"{uid}#2", 2)]
    assert "16x16" in refs[1].warnings[0] and "mixes 2 orientations/sizes" in refs[1].warnings[0]


def test_slices_with_uint16_storage_and_fractional_slope(tmp_path: Path) -> None:
    u = write_series(tmp_path / "u", unsigned=True)
    vol = load_volume(u.folder)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, u.values)
    f = write_series(tmp_path / "f", slope=0.5, intercept=-1000.0)
    vol = load_volume(f.folder)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, f.values)
    assert_same_geometry_as_sitk(vol, sitk_series(f.folder, f.series_uid))


def test_values_beyond_int16_promote_to_float32(tmp_path: Path) -> None:
    v = np.full((3, 6, 8), 40000, dtype=np.int32)
    v[:, 0, 0] = 0
    s = write_series(tmp_path / "big", size=(8, 6, 3), values=v, unsigned=True, intercept=0.0, modality="MR")
    vol = load_volume(s.folder)
    assert vol.array.dtype == np.float32 and vol.array.max() == 40000


def test_enhanced_multiframe_ct_sorted_by_position_with_per_frame_rescale(tmp_path: Path) -> None:
    order = [3, 1, 0, 4, 2]
    slopes = [1.0, 2.0, 1.0, 0.5, 1.0]
    e = write_enhanced_ct(tmp_path / "mf" / "enhanced.dcm", frame_order=order, slopes=slopes)
    vol = load_volume(tmp_path / "mf")
    assert vol.shape_ijk == (8, 6, 5)
    np.testing.assert_allclose(vol.origin, (-100.0, -90.0, 30.0))
    np.testing.assert_allclose(vol.spacing, (0.7, 0.8, 2.5))
    np.testing.assert_allclose(vol.direction, np.eye(3))
    # frame numbers (1-based) of the slices in z order
    assert vol.source_frame_numbers == [order.index(k) + 1 for k in range(5)]
    assert len(set(vol.source_sop_instance_uids)) == 1
    expected = np.stack([np.round((e.values[k] + 1024.0) / slopes[k]) * slopes[k] - 1024.0 for k in range(5)])
    np.testing.assert_array_equal(vol.array, expected)
    assert vol.array.dtype == np.float32


def test_enhanced_multiframe_in_frame_order_matches_simpleitk(tmp_path: Path) -> None:
    e = write_enhanced_ct(tmp_path / "mf" / "enhanced.dcm")
    vol = load_volume(e.files[0])
    img = sitk.ReadImage(str(e.files[0]))
    assert_same_geometry_as_sitk(vol, img)
    assert vol.array.dtype == np.int16


def test_jpeg2000_series_round_trip(tmp_path: Path) -> None:
    s = write_series(tmp_path / "plain", size=(64, 64, 3))  # openjpeg needs tiles larger than 32 px
    out = tmp_path / "j2k"
    out.mkdir()
    for f in s.files:
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless)
        ds.save_as(out / f.name)
    vol = load_volume(out)
    np.testing.assert_array_equal(vol.array, s.values)
    assert_same_geometry_as_sitk(vol, sitk_series(out, s.series_uid))


def test_folder_with_two_series_needs_a_choice(tmp_path: Path) -> None:
    a = write_series(tmp_path / "a")
    write_series(tmp_path / "b")
    with pytest.raises(DicomInputError, match="holds 2 image series"):
        load_volume(tmp_path)
    assert load_volume(tmp_path, series_uid=a.series_uid).series_instance_uid == a.series_uid


def test_spacing_between_slices_that_disagrees_is_reported_and_no_phi_in_warnings(tmp_path: Path) -> None:
    s = write_series(tmp_path / "s", size=(8, 8, 4), slice_thickness=5.0)
    for f in s.files:
        ds = pydicom.dcmread(f)
        ds.SpacingBetweenSlices = 3.0
        ds.save_as(f)
    vol = load_volume(s.folder)
    assert any("SpacingBetweenSlices 3 mm disagrees with the 2.5 mm" in w for w in vol.warnings)
    assert any("SliceThickness 5 mm differs from the 2.5 mm spacing" in w and "gapped" not in w for w in vol.warnings)
    text = " ".join(vol.warnings)
    assert "Synthetic" not in text and "SYNTH-001" not in text  # no patient name or ID in messages


def test_load_from_a_list_of_files_in_any_order(tmp_path: Path) -> None:
    s = write_series(tmp_path / "s", size=(8, 8, 6))
    files = list(reversed(s.files))
    vol = load_volume(files)
    np.testing.assert_array_equal(vol.array, s.values)
    assert vol.metadata is not None and vol.metadata.series.number_of_instances.value == 6


def test_instance_numbers_out_of_position_order_are_reported(tmp_path: Path) -> None:
    s = write_series(tmp_path / "s", size=(8, 8, 4), reverse_instance_numbers=False)
    assert load_volume(s.folder).extra["instance_number_order"] == "increasing"
    ds = pydicom.dcmread(s.files[0])
    ds.InstanceNumber = 9
    ds.save_as(s.files[0])
    vol = load_volume(s.folder)
    assert vol.extra["instance_number_order"] == "mixed"
    assert any("InstanceNumber does not follow the slice positions" in w for w in vol.warnings)


def test_holds_an_image_stops_at_the_first_image_and_skips_seg_and_unreadable_files(ct3slice_dir: Path, tmp_path: Path) -> None:
    from MedImgAILib.dicom.scan import holds_an_image

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    seg = ct3slice_dir / "liver_seg.dcm"
    assert not holds_an_image([junk, seg])
    assert holds_an_image([junk, seg, *sorted(ct3slice_dir.glob("0?.dcm"))])
    assert not holds_an_image([])


def test_scan_reads_in_turn_or_in_a_pool_with_the_same_result(tmp_path: Path, monkeypatch) -> None:
    """By default the headers are read in turn unless the first reads are slow (files not in the page
    cache), then a thread pool reads the rest; either way, and with an explicit pool, the same series,
    instances and slices in the same order, and the same skipped files."""
    import importlib

    scan_mod = importlib.import_module("MedImgAILib.dicom.scan")  # the package exports a function of that name

    for n, origin_z in enumerate((30.0, -40.0)):
        write_series(tmp_path / f"s{n}", size=(8, 6, 20), origin=(-100.0, -90.0, origin_z))
    (tmp_path / "notes.txt").write_text("not dicom")

    def summary(result):
        return ([(r.series_instance_uid, [h.path for h in r.instances], [s.sop_instance_uid for s in r.slices])
                 for r in result.series], sorted(result.skipped))

    used_pool = []
    real_pool = scan_mod.ThreadPoolExecutor

    def spy_pool(*a, **k):
        used_pool.append(k.get("max_workers"))
        return real_pool(*a, **k)

    monkeypatch.setattr(scan_mod, "ThreadPoolExecutor", spy_pool)
    in_turn = summary(scan_tree(tmp_path))  # cached files: read in turn
    assert used_pool == []
    monkeypatch.setattr(scan_mod, "_SLOW_READ_S", 0.0)  # every read counts as slow: the pool takes the rest
    probed = summary(scan_tree(tmp_path))
    assert len(used_pool) == 1 and used_pool[0] > 1
    assert probed == in_turn == summary(scan_tree(tmp_path, workers=3))
    assert len(in_turn[0]) == 2 and all(len(s) == 20 for _u, _p, s in in_turn[0])
