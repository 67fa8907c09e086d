"""The chest-CT phantom: a radiologist's series that validates, reads back with the same geometry
everywhere, and whose truth (nodule volumes, noise) is what the pixels show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from MedImgAILib.phantoms import (
    AcquisitionSpec,
    NoduleSpec,
    PhantomSpec,
    PhantomSpecError,
    RandomNodules,
    generate_phantom,
    spec_from_preset,
    write_phantom_series,
    write_study,
)
from Testing.conftest import REPO

# three nodules of known type at known places (right upper, left lower, right lower lobe)
SOLID = NoduleSpec(type="solid", diameter_mm=10.0, center_lps_mm=(-80.0, -10.0, 40.0))
PART = NoduleSpec(type="part_solid", diameter_mm=16.0, solid_core_diameter_mm=7.0, center_lps_mm=(85.0, 20.0, 10.0))
GGO = NoduleSpec(type="ground_glass", diameter_mm=14.0, center_lps_mm=(-90.0, 30.0, -20.0))


def small_acq(**kw) -> AcquisitionSpec:
    base = dict(matrix=128, slices=40, slice_thickness_mm=2.5, z_start_mm=-30.0, noise_sd_hu=15.0)
    base.update(kw)
    return AcquisitionSpec(**base)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("phantom") / "ct"
    spec = PhantomSpec(seed=7, nodules=[SOLID, PART, GGO], acquisition=small_acq(manufacturer="SIEMENS", kernel="sharp", kvp=100))
    return out, write_phantom_series(spec, out)


# --- the DICOM series -------------------------------------------------------------------------------
def test_every_file_is_dciodvfy_clean(series, dciodvfy):
    out, case = series
    files = sorted(out.glob("CT*.dcm"))
    assert len(files) == 40
    for f in files[:: 13] + [files[-1]]:
        res = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True)
        report = res.stdout + res.stderr
        assert "Error" not in report, report
        assert "Warning" not in report, report


def test_no_temporary_files_are_left(series):
    out, _ = series
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert (out / "truth.json").is_file()


def test_geometry_matches_simpleitk(series):
    import SimpleITK as sitk

    out, case = series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    img = reader.Execute()
    g = case.truth["geometry"]
    assert img.GetSize() == (128, 128, 40)
    np.testing.assert_allclose(img.GetSpacing(), g["spacing"], atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), g["origin"], atol=1e-6)
    np.testing.assert_allclose(img.GetDirection(), g["direction"], atol=1e-6)
    assert g["origin"][2] == pytest.approx(-30.0)
    # pixels read back equal the in-memory volume (HU, integer valued)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img).astype(np.float32), case.volume.array)


def test_headers_carry_the_acquisition(series):
    from MedImgAILib.dicom.metadata import extract_metadata

    out, case = series
    ds = pydicom.dcmread(out / "CT00001.dcm")
    md = extract_metadata(ds)
    acq = md.acquisition
    assert acq.kvp.value == 100.0
    assert acq.convolution_kernel.value == "B70f"  # Siemens' name for a sharp kernel
    assert acq.slice_thickness_mm.value == 2.5
    assert acq.ctdi_vol_mgy.value == pytest.approx(case.truth["acquisition"]["ctdi_vol_mgy_header"], abs=1e-3)
    assert md.equipment.manufacturer.value == "SIEMENS"
    assert md.series.body_part_examined.value == "CHEST"
    assert md.patient.sex.value == "M" and md.patient.age_years.value == 62
    assert ds.PatientName == "PHANTOM^CHEST" and ds.PatientID == "PH0001"
    # instance 1 is the most superior slice, as a head-first helical scan numbers them
    last = pydicom.dcmread(out / "CT00040.dcm")
    assert float(ds.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])
    assert ds.RescaleIntercept == -1024 and ds.PixelRepresentation == 1


def test_truth_json_describes_the_nodules(series):
    out, case = series
    truth = json.loads((out / "truth.json").read_text())
    assert truth["series_instance_uid"] == pydicom.dcmread(out / "CT00001.dcm").SeriesInstanceUID
    assert truth["noise_sd_hu"] == 15.0
    types = [n["type"] for n in truth["nodules"]]
    assert types == ["solid", "part_solid", "ground_glass"]
    solid = truth["nodules"][0]
    assert solid["center_lps_mm"] == [-80.0, -10.0, 40.0]
    assert solid["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 5.0**3)
    assert solid["side"] == "right" and solid["lobe"] == "RUL"
    assert truth["nodules"][1]["solid_core_diameter_mm"] == 7.0
    assert truth["nodules"][1]["side"] == "left"
    assert solid["axial_long_axis_mm"] == pytest.approx(10.0, abs=0.3)


# --- truth vs pixels ------------------------------------------------------------------------------
def _fine(nod: NoduleSpec, seed: int = 3, **kw):
    """A fine grid (0.25 mm pixels, 0.5 mm slices) centred on one nodule, no noise, no blur."""
    c = nod.center_lps_mm
    acq = AcquisitionSpec(matrix=112, pixel_spacing_mm=0.25, slice_thickness_mm=0.5, slices=60,
                          z_start_mm=c[2] - 14.75, center_xy_mm=(c[0], c[1]), noise_sd_hu=0.0, blur_sigma_mm=0.0,
                          edge_enhancement=0.0, **kw)
    return generate_phantom(PhantomSpec(seed=seed, nodules=[nod], acquisition=acq))


@pytest.mark.parametrize("nod", [
    NoduleSpec(type="solid", diameter_mm=10.0, center_lps_mm=(-80.0, -10.0, 40.0)),
    NoduleSpec(type="solid", diameter_mm=9.0, shape="ellipsoid", axis_ratios=(1.6, 1.0, 0.7),
               euler_deg=(30.0, 20.0, 0.0), center_lps_mm=(85.0, 20.0, 10.0)),
    NoduleSpec(type="ground_glass", diameter_mm=8.0, shape="lobulated", center_lps_mm=(-90.0, 30.0, -20.0)),
], ids=["sphere", "ellipsoid", "lobulated"])
def test_label_volume_matches_truth_at_fine_resolution(nod):
    case = _fine(nod)
    t = case.truth["nodules"][0]
    assert t["label_volume_mm3"] == pytest.approx(t["volume_mm3"], rel=0.03)


def test_juxtapleural_nodule_is_cut_by_the_pleura():
    spec = PhantomSpec(seed=5, random_nodules=RandomNodules(count=1, diameter_range_mm=(9.0, 9.0), types=["solid"],
                                                           shapes=["sphere"], juxtapleural_fraction=1.0),
                       acquisition=AcquisitionSpec(matrix=64, slices=2, noise_sd_hu=0.0))
    placed = generate_phantom(spec).truth["nodules"][0]
    assert placed["juxtapleural"]
    full = 4 / 3 * np.pi * 4.5**3
    # about a fifth of the diameter lies beyond the pleura and is not nodule
    assert 0.6 * full < placed["volume_mm3"] < 0.98 * full
    nod = NoduleSpec(type="solid", diameter_mm=9.0, juxtapleural=True, center_lps_mm=tuple(placed["center_lps_mm"]))
    fine = _fine(nod, seed=5).truth["nodules"][0]  # same patient
    assert fine["volume_mm3"] == pytest.approx(placed["volume_mm3"], rel=0.01)
    assert fine["label_volume_mm3"] == pytest.approx(fine["volume_mm3"], rel=0.04)


def test_nodule_attenuation_by_type():
    case = _fine(PART)
    arr = case.volume.array
    k, j, i = (np.array(arr.shape) - 1) // 2
    assert arr[k, j, i] == pytest.approx(35, abs=15)  # solid core
    r_vox = int(round(5.5 / 0.25))  # between the 3.5 mm core and the 8 mm edge
    halo = arr[k, j, i + r_vox - 2: i + r_vox + 3]
    assert np.all((halo > -700) & (halo < -450))
    g = _fine(GGO).volume.array
    kc, jc, ic = (np.array(g.shape) - 1) // 2
    centre = g[kc - 2:kc + 3, jc - 2:jc + 3, ic - 2:ic + 3]
    assert -700 < np.median(centre) < -500


# --- acquisition effects ----------------------------------------------------------------------------
def test_same_seed_same_pixels_other_seed_other_noise_same_patient():
    spec = PhantomSpec(seed=11, random_nodules=RandomNodules(count=2), acquisition=small_acq(matrix=64, slices=12))
    a = generate_phantom(spec)
    b = generate_phantom(spec)
    np.testing.assert_array_equal(a.volume.array, b.volume.array)
    c = generate_phantom(spec.model_copy(update={"seed": 12, "anatomy_seed": 11}))
    assert not np.array_equal(a.volume.array, c.volume.array)
    assert [n["center_lps_mm"] for n in a.truth["nodules"]] == [n["center_lps_mm"] for n in c.truth["nodules"]]
    d = generate_phantom(spec.model_copy(update={"seed": 13}))
    assert [n["center_lps_mm"] for n in a.truth["nodules"]] != [n["center_lps_mm"] for n in d.truth["nodules"]]


@pytest.mark.parametrize("kernel,corr", [("soft", None), ("sharp", None), ("standard", 0.8), ("soft", 0.0)])
def test_noise_sd_is_what_was_asked(kernel, corr):
    """Two noise realizations of the same patient: their difference is pure noise (SD * sqrt 2)
    everywhere, and air outside the body measures the SD directly."""
    acq = small_acq(matrix=160, slices=6, noise_sd_hu=22.0, kernel=kernel, noise_correlation_mm=corr)
    a = generate_phantom(PhantomSpec(seed=1, anatomy_seed=4, acquisition=acq), with_labels=False).volume.array
    b = generate_phantom(PhantomSpec(seed=2, anatomy_seed=4, acquisition=acq), with_labels=False).volume.array
    diff = (a - b)[:, 8:-8, 8:-8]
    assert diff.std() / np.sqrt(2) == pytest.approx(22.0, rel=0.05)
    air = a[:, 4:20, 4:60]  # anterior corner of the field of view: air only
    assert air.mean() == pytest.approx(-1000, abs=3)
    assert air.std() == pytest.approx(22.0, rel=0.1)


def test_sharp_kernel_sharper_edges_and_finer_noise_than_soft():
    def run(kernel, noise):
        acq = small_acq(matrix=256, fov_mm=190.0, slices=3, kernel=kernel, noise_sd_hu=noise)
        return generate_phantom(PhantomSpec(seed=1, anatomy_seed=4, acquisition=acq), with_labels=False).volume.array

    soft, sharp = run("soft", 0.0), run("sharp", 0.0)
    grad = lambda v: np.abs(np.diff(v[1], axis=1)).max()
    assert grad(sharp) > 1.15 * grad(soft)
    ns, nh = run("soft", 30.0) - soft, run("sharp", 30.0) - sharp

    def neighbour_corr(n):
        n = n[:, 10:-10, 10:-10]
        return np.corrcoef(n[:, :, :-1].ravel(), n[:, :, 1:].ravel())[0, 1]

    assert neighbour_corr(ns) > neighbour_corr(nh) + 0.2


def _clear_spot(seed: int) -> tuple[float, float, float]:
    """A point in the right lung at least 8 mm from any vessel and 15 mm from the pleura."""
    from MedImgAILib.phantoms.anatomy import build_anatomy

    an = build_anatomy(seed)
    for p in np.random.default_rng(0).uniform([-130, -60, -40], [-40, 60, 80], size=(2000, 3)):
        if an.lungs[0].sdf(*p) < -15 and an.vessels.min_distance(p).min() > 8:
            return tuple(float(v) for v in p)
    raise AssertionError("no vessel-free spot")


def test_thick_slices_dilute_a_small_nodule():
    c = _clear_spot(2)
    nod = NoduleSpec(type="solid", diameter_mm=3.0, center_lps_mm=c)

    def peak(thickness):
        acq = AcquisitionSpec(matrix=96, pixel_spacing_mm=0.6, center_xy_mm=c[:2], slice_thickness_mm=thickness,
                              slices=9, z_start_mm=c[2] - 4 * thickness, noise_sd_hu=0.0)
        return generate_phantom(PhantomSpec(seed=2, nodules=[nod], acquisition=acq)).volume.array[4, 46:50, 46:50].max()

    thin, thick = peak(0.625), peak(5.0)
    assert thin > -100  # a 3 mm nodule in 0.6 mm slices is nearly solid in its centre
    assert thick < thin - 250  # 3 mm of nodule and 2 mm of lung averaged in a 5 mm slice


def test_lower_kvp_raises_bone_not_soft_tissue():
    def run(kvp):
        acq = small_acq(matrix=128, slices=2, kvp=kvp, noise_sd_hu=0.0)
        return generate_phantom(PhantomSpec(seed=1, anatomy_seed=4, acquisition=acq), with_labels=False).volume.array

    a80, a120 = run(80), run(120)
    bone = a120 > 500
    soft = (a120 > 20) & (a120 < 60)
    assert a80[bone].mean() > a120[bone].mean() + 80
    assert abs(a80[soft].mean() - a120[soft].mean()) < 5


# --- anatomy: nodules vs vessels --------------------------------------------------------------------
def test_vessels_look_like_nodules_in_a_slice_but_are_tubes_in_3d():
    acq = AcquisitionSpec(matrix=192, fov_mm=380, slice_thickness_mm=2.0, slices=60, z_start_mm=-60.0, noise_sd_hu=0.0)
    case = generate_phantom(PhantomSpec(seed=21, nodules=[SOLID], acquisition=acq))
    arr, lab = case.volume.array, case.labels
    lung = ndimage.binary_erosion(arr < -700, iterations=1)
    lung_region = ndimage.binary_fill_holes(lung, structure=np.ones((1, 3, 3)))
    bright = (arr > -500) & lung_region & (lab == 0)
    # in single slices: many round-ish bright blobs of nodule-like size
    blobs = 0
    for k in range(0, arr.shape[0], 6):
        comp, n = ndimage.label(bright[k])
        sizes = ndimage.sum_labels(np.ones_like(comp), comp, range(1, n + 1))
        blobs += int(((sizes >= 2) & (sizes <= 30)).sum())
    assert blobs > 40
    # in 3D: they join into long branching tubes, unlike the nodule
    comp, n = ndimage.label(bright)
    sizes = ndimage.sum_labels(np.ones_like(comp), comp, range(1, n + 1))
    big = np.argsort(sizes)[::-1][:4] + 1
    extents = [np.ptp(np.nonzero(comp == c)[0]) * 2.0 for c in big]
    assert max(extents) > 60.0  # a vessel tree spans > 6 cm craniocaudally
    nod_k = np.nonzero(lab == 1)[0]
    assert np.ptp(nod_k) * 2.0 <= 12.0  # the 10 mm nodule spans its own diameter


def test_default_coverage_includes_both_lungs_with_air_free_end_slices():
    acq = AcquisitionSpec(matrix=64, slice_thickness_mm=5.0, noise_sd_hu=0.0)
    case = generate_phantom(PhantomSpec(seed=2, acquisition=acq))
    arr = case.volume.array
    assert case.truth["anatomy"]["lungs_fully_covered"]
    body = ndimage.binary_fill_holes(arr > -300, structure=np.ones((1, 3, 3)))
    lungish = ((arr < -600) & ndimage.binary_erosion(body, iterations=2)).sum(axis=(1, 2))
    assert lungish[0] == 0 and lungish[-1] == 0
    assert lungish.max() > 500


# --- API edges ---------------------------------------------------------------------------------------
def test_write_study_two_reconstructions_one_patient(tmp_path):
    spec = PhantomSpec(seed=9, nodules=[SOLID], acquisition=small_acq(matrix=64, slices=None, z_start_mm=None))
    cases = write_study(spec, tmp_path, [{"slice_thickness_mm": 1.25, "kernel": "sharp", "slices": 16, "z_start_mm": 30.0},
                                         {"slice_thickness_mm": 5.0, "slices": 4, "z_start_mm": 32.5}])
    a, b = (pydicom.dcmread(c.files[0]) for c in cases)
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SeriesNumber != b.SeriesNumber
    assert (a.SliceThickness, b.SliceThickness) == (1.25, 5.0)
    assert cases[0].truth["nodules"][0]["center_lps_mm"] == cases[1].truth["nodules"][0]["center_lps_mm"]


def test_nodule_outside_the_lungs_is_refused_with_its_position():
    with pytest.raises(PhantomSpecError, match=r"nodule 1: centre \(0.0, 0.0, 0.0\).*not inside a lung"):
        generate_phantom(PhantomSpec(nodules=[NoduleSpec(center_lps_mm=(0.0, 0.0, 0.0))], acquisition=small_acq(matrix=32, slices=1)))


def test_ldct_preset_is_low_dose_thin_slice():
    spec = spec_from_preset("ldct-screening", seed=1)
    a = spec.acquisition
    assert a.kvp == 120 and a.ctdi_vol <= 3.0 and a.slice_thickness_mm <= 2.5 and a.interval_mm <= a.slice_thickness_mm
    assert spec.study.indication == "lung cancer screening"


def test_cli_writes_a_series_and_prints_json(tmp_path):
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "MedImgAILib", "phantom", str(out), "--matrix", "64", "--slices", "6",
                          "--slice-thickness", "2.5", "--nodule", "solid,8,-80,-10,40", "--z-start", "34",
                          "--noise", "12", "--kvp", "110", "--manufacturer", "Philips", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["size"] == [64, 64, 6] and summary["files"] == 6
    assert summary["nodules"][0]["type"] == "solid" and summary["nodules"][0]["center_lps_mm"] == [-80.0, -10.0, 40.0]
    assert summary["convolution_kernel"] == "B"  # Philips' soft kernel
    assert len(list(out.glob("CT*.dcm"))) == 6


def test_cli_bad_nodule_is_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "MedImgAILib", "phantom", str(tmp_path / "x"), "--matrix", "32",
                          "--slices", "2", "--nodule", "solid,8,0,0,0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "not inside a lung" in res.stderr
    res = subprocess.run([sys.executable, "-m", "MedImgAILib", "phantom", str(tmp_path / "y"), "--matrix", "8"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "acquisition.matrix" in res.stderr and "Traceback" not in res.stderr


def test_header_overrides_for_protocol_checks(tmp_path, dciodvfy):
    """A series that breaks one protocol criterion in its header only (the pixels are the same)."""
    spec = PhantomSpec(seed=4, acquisition=small_acq(matrix=32, slices=2),
                       header_overrides={"CTDIvol": 9.5, "ConvolutionKernel": "B80f", "SpiralPitchFactor": None})
    case = write_phantom_series(spec, tmp_path / "o", labels_nifti=True)
    ds = pydicom.dcmread(case.files[0])
    assert ds.CTDIvol == 9.5 and ds.ConvolutionKernel == "B80f" and "SpiralPitchFactor" not in ds
    assert case.truth["acquisition"]["ctdi_vol_mgy_header"] == 9.5
    res = subprocess.run([dciodvfy, str(case.files[0])], capture_output=True, text=True)
    assert "Error" not in res.stdout + res.stderr  # SpiralPitchFactor is Type 3: still valid
    import nibabel as nib

    lab = nib.load(tmp_path / "o" / "nodule_labels.nii.gz")
    assert lab.shape == (32, 32, 2)
    with pytest.raises(ValueError, match="not DICOM keywords: NotATag"):
        PhantomSpec(header_overrides={"NotATag": 1})


def test_perifissural_nodule_lies_flat_on_a_fissure():
    spec = PhantomSpec(seed=2, random_nodules=RandomNodules(count=2, diameter_range_mm=(6.0, 8.0), juxtapleural_fraction=0.0,
                                                           perifissural_fraction=1.0),
                       acquisition=AcquisitionSpec(matrix=32, slices=2))
    for n in generate_phantom(spec).truth["nodules"]:
        assert n["perifissural"] and n["shape"] == "lentiform"
        a = sorted(n["semi_axes_mm"])
        assert a[0] == pytest.approx(0.6 / 1.3 * a[2])  # flattened across the fissure
        assert n["volume_mm3"] == pytest.approx(4 / 3 * np.pi * np.prod(n["semi_axes_mm"]))


def test_fissures_show_as_faint_lines():
    """The oblique fissure crosses the lung as a thin line denser than lung, far less dense than a vessel."""
    acq = AcquisitionSpec(matrix=256, fov_mm=190.0, center_xy_mm=(80.0, 4.0), slices=1, z_start_mm=0.0,
                          noise_sd_hu=0.0, blur_sigma_mm=0.0, edge_enhancement=0.0)
    with_f = generate_phantom(PhantomSpec(seed=1, acquisition=acq), with_labels=False).volume.array[0]
    from MedImgAILib.phantoms.generate import _prepare
    from MedImgAILib.phantoms.render import Renderer

    an, nods, grid, _ = _prepare(PhantomSpec(seed=1, acquisition=acq))
    without = Renderer(an, nods, acq, grid, fissures=False).render_chunk(0, 1)[0]
    diff = with_f - np.rint(without)
    assert diff.max() > 60  # the sheet adds density along a line ...
    assert (diff > 20).sum() < 0.05 * diff.size  # ... only along a line


def test_missing_slice_series_and_thread_independence(tmp_path):
    spec = PhantomSpec(seed=3, omit_slices=[2], acquisition=small_acq(matrix=48, slices=5))
    case = write_phantom_series(spec, tmp_path / "gap", workers=2)
    zs = sorted(float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in case.files)
    assert len(zs) == 4 and np.diff(zs).max() == pytest.approx(2 * np.diff(zs).min())
    assert case.truth["omitted_slices"] == [2]
    one = generate_phantom(spec, workers=1).volume.array
    np.testing.assert_array_equal(one, case.volume.array)


def test_sample_spec_spans_acquisitions_reproducibly():
    from MedImgAILib.phantoms import sample_spec

    specs = [sample_spec(s, matrix=64) for s in range(40)]
    assert sample_spec(3, matrix=64) == specs[3]
    assert {s.acquisition.slice_thickness_mm for s in specs} == {0.625, 1.25, 2.5, 5.0}
    assert {s.acquisition.kernel for s in specs} == {"soft", "standard", "sharp"}
    assert all(8.0 <= s.acquisition.noise_sd_hu <= 60.0 for s in specs)
    case = generate_phantom(sample_spec(5, matrix=48, slices=4))
    assert case.volume.array.shape == (4, 48, 48) and 1 <= len(case.truth["nodules"]) <= 6


def test_cli_study_of_two_reconstructions(tmp_path):
    res = subprocess.run([sys.executable, "-m", "MedImgAILib", "phantom", str(tmp_path / "st"), "--matrix", "32",
                          "--slices", "4", "--recon", "2.5:sharp", "--recon", "5", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    series = json.loads(res.stdout)["series"]
    assert [s["slice_thickness_mm"] for s in series] == [2.5, 5.0]
    assert series[0]["study_instance_uid"] == series[1]["study_instance_uid"]
    assert series[0]["series_instance_uid"] != series[1]["series_instance_uid"]
    assert all(len(list(Path(s["out_dir"]).glob("CT*.dcm"))) == 4 for s in series)


def test_the_project_loader_reads_back_what_was_rendered(series):
    """MedImgAILib.dicom (the pipeline's loader) gives the same voxels, geometry and source UIDs, and
    skips truth.json beside the slices."""
    from MedImgAILib.dicom import load_volume

    out, case = series
    vol = load_volume(out)
    np.testing.assert_allclose(vol.affine, case.volume.affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array.astype(np.float32), case.volume.array)
    assert vol.source_sop_instance_uids == case.volume.source_sop_instance_uids
    assert not vol.warnings


def test_breathing_motion_breaks_slice_to_slice_continuity():
    def run(motion):
        acq = small_acq(matrix=96, slices=30, slice_thickness_mm=2.0, noise_sd_hu=0.0, breathing_motion_mm=motion,
                        breathing_period_mm=20.0)
        return generate_phantom(PhantomSpec(seed=6, acquisition=acq), with_labels=False).volume.array

    still, moving = run(0.0), run(8.0)
    lung = (still < -600)[:-1] & (still < -600)[1:]
    jump = lambda v: np.abs(np.diff(v, axis=0))[lung].mean()
    assert jump(moving) > 1.3 * jump(still)
    np.testing.assert_array_equal(run(0.0), still)
