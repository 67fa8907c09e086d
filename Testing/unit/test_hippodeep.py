"""mr-hippocampus (hippodeep) on its published example T1, against the original implementation's
outputs (shared/models/hippodeep/REFERENCE.md and reference/).

Given the example T1 as a NIfTI file, or written as a DICOM MR series sliced axially or sagittally, a
radiologist gets the intracranial, cerebrum and left/right hippocampus volumes of the original program
(within 0.5 %, in practice to 1e-6) and its masks (Dice >= 0.99, in practice identical). The model runs
once per input for the whole module (module-scoped fixtures).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from MedImgAILib.dicom.mr_series_writer import write_mr_series
from MedImgAILib.models.hippodeep import BINARY_THRESHOLD, HippodeepModel, HippodeepResult, load_t1
from MedImgAILib.results import AnalysisResult
from MedImgAILib.volume import Volume
from Testing.conftest import REPO, require_tool, shared_dir

# REFERENCE.md: the original hippodeep.py (commit 310305f) on example_brain_t1.nii.gz
REF_ETIV_MM3 = 1439994.390625
REF_CEREBRUM_MM3 = 1244816.671875
REF_HIPPO_L_MM3 = 3160.5540199279785
REF_HIPPO_R_MM3 = 3343.7832136154175
REF_T = np.array(
    [
        [0.671512, 0.03905, -0.021408, 0.001884],
        [-0.033116, 0.861496, -0.095932, -0.038767],
        [0.005893, 0.200433, 0.924956, 0.325862],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
VOLUME_TOLERANCE = 0.005  # the 0.5 %


def hd_dir() -> Path:
    return shared_dir() / "models" / "hippodeep"


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def reference_mask(name: str) -> np.ndarray:
    """A reference NIfTI's voxels in the Volume's [k, j, i] order (the same grid as the input)."""
    arr = np.asanyarray(nib.load(hd_dir() / "reference" / f"example_brain_t1_{name}.nii.gz").dataobj)
    return np.ascontiguousarray(arr.transpose(2, 1, 0))


def volumes(r: HippodeepResult) -> dict[str, float]:
    return {
        "etiv": r.etiv_mm3,
        "cerebrum": r.cerebrum_mm3,
        "left": r.hippocampus_left_mm3,
        "right": r.hippocampus_right_mm3,
    }


@pytest.fixture(scope="module")
def model() -> HippodeepModel:
    # the offline path: the three published files from ../shared, sha256-checked against the card
    return HippodeepModel.load(weights_dir=hd_dir(), device="cpu", offline=True)


@pytest.fixture(scope="module")
def nifti_volume() -> Volume:
    return load_t1(hd_dir() / "example_brain_t1.nii.gz")


PROGRESS: list[tuple[str, float]] = []


@pytest.fixture(scope="module")
def nifti_result(model: HippodeepModel, nifti_volume: Volume) -> HippodeepResult:
    return model.analyze(nifti_volume, progress=lambda step, frac: PROGRESS.append((step, frac)))


@pytest.fixture(scope="module")
def dicom_series(nifti_volume: Volume, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t1dicom")
    out = {}
    for orientation in ("axial", "sagittal", "coronal"):
        write_mr_series(nifti_volume, root / orientation, orientation)
        out[orientation] = root / orientation
    return out


@pytest.fixture(scope="module")
def dicom_results(model: HippodeepModel, dicom_series: dict[str, Path]) -> dict[str, HippodeepResult]:
    # the two acquisitions a site runs for volumetry; coronal is checked for geometry only
    return {o: model.analyze(load_t1(dicom_series[o])) for o in ("axial", "sagittal")}


# --- the NIfTI path against the original ----------------------------------------------------------
def test_weights_are_the_published_files_and_fit_the_networks(model: HippodeepModel):
    assert model.weights_sha256 == {
        "head": "f50ada0f3e6011955f00a05e6da070b1528adde30a80b802f8a73ea9d918cff9",
        "affine": "070fce2921a3d333eb85560c0873c65c91cc4c41ac99c219e4f3172cc43333b7",
        "hippocampus": "38d9340ad960958618fd6235385a9a20f8d7c1840696e6180dac7598847e1846",
    }
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # SPEC.md: elements without num_batches_tracked / running statistics
    buffers = lambda m: sum(b.numel() for n, b in m.named_buffers() if "num_batches" not in n)  # noqa: E731
    assert count(model.pipeline.head) + buffers(model.pipeline.head) == 286372
    assert count(model.pipeline.affine_net) == 258412
    assert count(model.pipeline.hippo) + buffers(model.pipeline.hippo) == 499177


def test_volumes_match_the_original(nifti_result: HippodeepResult):
    r = nifti_result
    assert rel(r.etiv_mm3, REF_ETIV_MM3) < VOLUME_TOLERANCE
    assert rel(r.cerebrum_mm3, REF_CEREBRUM_MM3) < VOLUME_TOLERANCE
    assert rel(r.hippocampus_left_mm3, REF_HIPPO_L_MM3) < VOLUME_TOLERANCE
    assert rel(r.hippocampus_right_mm3, REF_HIPPO_R_MM3) < VOLUME_TOLERANCE
    # measured here: identical eTIV/cerebrum, hippocampi within 1e-6 (float32 summation order)
    assert rel(r.etiv_mm3, REF_ETIV_MM3) < 1e-3 and rel(r.hippocampus_left_mm3, REF_HIPPO_L_MM3) < 1e-3
    assert r.voxel_volume_mm3 == pytest.approx(5.359375)


def test_registration_matches_the_original(nifti_result: HippodeepResult):
    np.testing.assert_allclose(nifti_result.template_transform, REF_T, atol=1e-4)
    assert nifti_result.hippocampus_box_start_ijk == (39, 41, 27)
    assert nifti_result.hippocampus_box_size_ijk == (58, 47, 39)


def test_masks_match_the_original(nifti_result: HippodeepResult):
    r = nifti_result
    assert r.brain_mask.shape == r.source.array.shape and r.brain_mask.dtype == np.uint8
    assert dice(r.brain_mask, reference_mask("brain_mask")) >= 0.99
    assert dice(r.cerebrum_mask, reference_mask("cerebrum_mask")) >= 0.99
    for mine, ref in ((r.hippocampus_left_soft, reference_mask("mask_L")), (r.hippocampus_right_soft, reference_mask("mask_R"))):
        assert dice(mine > 0, ref > 0) >= 0.99
        assert dice(mine >= BINARY_THRESHOLD, ref >= BINARY_THRESHOLD) >= 0.99
        assert np.abs(mine.astype(int) - ref.astype(int)).max() <= 1  # uint8 truncation at most
        assert set(np.unique(mine)) <= {0} | set(range(32, 256))


def test_progress_is_reported_in_order(nifti_result: HippodeepResult):
    assert [step for step, _ in PROGRESS] == ["head", "registration", "hippocampus", "native", "done"]
    fractions = [f for _, f in PROGRESS]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancelling_through_progress_stops_the_run(model: HippodeepModel, nifti_volume: Volume):
    from MedImgAILib.errors import CancelledError

    def cancel_at_registration(step: str, frac: float) -> None:
        if step == "registration":
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        model.analyze(nifti_volume, progress=cancel_at_registration)


def test_left_is_the_patients_left(nifti_result: HippodeepResult):
    src = nifti_result.source
    for mask, sign in ((nifti_result.hippocampus_left_mask(), +1), (nifti_result.hippocampus_right_mask(), -1)):
        centre = src.ijk_to_lps(np.argwhere(mask).mean(0)[::-1])
        assert sign * centre[0] > 10.0  # LPS +x is the patient's left


def test_masks_written_as_nifti_sit_on_the_reference_grid(nifti_result: HippodeepResult):
    ref = nib.load(hd_dir() / "reference" / "example_brain_t1_brain_mask.nii.gz")
    mine = nifti_result.mask_volumes()["intracranial"].to_nifti()
    np.testing.assert_allclose(mine.affine, ref.affine, atol=1e-4)
    assert dice(np.asanyarray(mine.dataobj), np.asanyarray(ref.dataobj)) >= 0.99


def test_findings_json(model: HippodeepModel, nifti_result: HippodeepResult, tmp_path: Path):
    a = model.to_analysis_result(nifti_result)
    assert [f.label for f in a.findings] == ["Left hippocampus", "Right hippocampus"]
    assert [f.side for f in a.findings] == ["left", "right"]
    # the label map is the export stage's instance map: one value per finding
    lm = nifti_result.label_map()
    for f, mask in zip(a.findings, (nifti_result.hippocampus_left_mask(), nifti_result.hippocampus_right_mask())):
        np.testing.assert_array_equal(lm == f.instance_value, mask.astype(bool))
        # key images show the slice with the largest cross-section
        areas = mask.reshape(mask.shape[0], -1).sum(1)
        assert f.slice_index is not None and areas[f.slice_index] == areas.max() > 0
    assert a.findings[0].volume_mm3 == pytest.approx(REF_HIPPO_L_MM3, rel=VOLUME_TOLERANCE)
    assert a.findings[0].finding_code.value == "5366008" and a.findings[0].finding_code.scheme == "SCT"
    m = a.study_measurements
    assert set(m) == {
        "etiv_mm3", "cerebrum_mm3", "hippocampus_left_mm3", "hippocampus_right_mm3",
        "hippocampal_fraction_of_etiv", "hippocampal_asymmetry_index",
    }
    assert m["hippocampal_fraction_of_etiv"] == pytest.approx((REF_HIPPO_L_MM3 + REF_HIPPO_R_MM3) / REF_ETIV_MM3, rel=1e-3)
    mean = (REF_HIPPO_L_MM3 + REF_HIPPO_R_MM3) / 2
    assert m["hippocampal_asymmetry_index"] == pytest.approx((REF_HIPPO_L_MM3 - REF_HIPPO_R_MM3) / mean, rel=1e-3)
    assert a.model.id == "mr-hippocampus" and a.model.weights_sha256.startswith("38d9340a")
    assert "1.75 mm" in " ".join(a.warnings)  # the example is coarser than the protocol
    back = AnalysisResult.read(a.write(tmp_path / "findings.json"))
    assert back.study_measurements == m


# --- the DICOM path -------------------------------------------------------------------------------
def test_written_series_are_valid_mr_images(dicom_series: dict[str, Path]):
    tool = require_tool("dciodvfy")
    for orientation, folder in dicom_series.items():
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == {"axial": 93, "sagittal": 137, "coronal": 137}[orientation]
        iop = [float(x) for x in pydicom.dcmread(files[0], stop_before_pixels=True).ImageOrientationPatient]
        assert iop == {"axial": [1, 0, 0, 0, 1, 0], "sagittal": [0, 1, 0, 0, 0, -1], "coronal": [1, 0, 0, 0, 0, -1]}[orientation]
        for f in (files[0], files[len(files) // 2]):
            p = subprocess.run([tool, str(f)], capture_output=True, text=True, timeout=60)
            problems = [l for l in (p.stdout + p.stderr).splitlines() if l.startswith(("Error", "Warning"))]
            assert problems == [], f"{orientation} {f.name}: {problems}"


def test_dicom_loads_back_to_the_same_voxels(nifti_volume: Volume, dicom_series: dict[str, Path]):
    for orientation, folder in dicom_series.items():
        v = load_t1(folder)
        assert v.modality == "MR"
        # back to the NIfTI's axis order (an exact permutation) and compare voxels and geometry
        same = Volume.from_sitk(sitk.DICOMOrient(v.to_sitk(), "LAS"))
        np.testing.assert_array_equal(same.array, nifti_volume.array)
        np.testing.assert_allclose(same.affine, nifti_volume.affine, atol=1e-4)


def test_dicom_axial_and_sagittal_give_the_same_volumes(nifti_result, dicom_results):
    base = volumes(nifti_result)
    for orientation, r in dicom_results.items():
        for name, v in volumes(r).items():
            assert rel(v, base[name]) < VOLUME_TOLERANCE, f"{orientation} {name}: {v} vs {base[name]}"


def test_dicom_masks_are_on_the_series_grid(dicom_results):
    r = dicom_results["sagittal"]
    assert r.brain_mask.shape == r.source.array.shape == (137, 93, 137)
    for mask, ref in ((r.brain_mask, "brain_mask"), (r.hippocampus_left_mask(), "mask_L"), (r.hippocampus_right_mask(), "mask_R")):
        back = Volume.from_sitk(sitk.DICOMOrient(r.source.with_array(mask).to_sitk(), "LAS")).array
        ref_arr = reference_mask(ref)
        assert dice(back, ref_arr >= (BINARY_THRESHOLD if ref.startswith("mask") else 1)) >= 0.99


@pytest.mark.slow
def test_an_oblique_head_is_handled_without_resampling(model: HippodeepModel, nifti_volume: Volume, nifti_result):
    """The same voxels with the head tilted 12 degrees and moved in the scanner: the method works in
    voxel space (LAS reordering, no resampling of obliques) and carries the tilt through its world
    transforms, so masks and volumes do not change."""
    c, s_ = np.cos(np.radians(12.0)), np.sin(np.radians(12.0))
    tilt = np.array([[1, 0, 0, 20.0], [0, c, -s_, -15.0], [0, s_, c, 30.0], [0, 0, 0, 1]])
    r = model.analyze(nifti_volume.with_array(nifti_volume.array, affine=tilt @ nifti_volume.affine))
    for name, v in volumes(r).items():
        assert rel(v, volumes(nifti_result)[name]) < 1e-4, name
    assert dice(r.hippocampus_left_mask(), nifti_result.hippocampus_left_mask()) >= 0.99
    np.testing.assert_array_equal(r.brain_mask, nifti_result.brain_mask)


@pytest.mark.slow
def test_results_export_as_seg_sr_and_key_images(model: HippodeepModel, dicom_series, dicom_results, tmp_path: Path):
    """Through the export stage: a SEG of both hippocampi (binary at the documented threshold) that
    dcmqi reads back voxel for voxel, an SR with the volumes, key images; dciodvfy finds no errors."""
    from MedImgAILib.export import export_study
    from MedImgAILib.export.common import DeviceInfo

    r = dicom_results["axial"]
    a = model.to_analysis_result(r)
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in dicom_series["axial"].glob("*.dcm")}
    sources = [by_uid[u] for u in r.source.source_sop_instance_uids]  # the volume's k order
    out = export_study(tmp_path / "export", r.source, r.label_map(), a.findings, sources,
                       DeviceInfo(model_id="mr-hippocampus", model_version=model.version),
                       study_measurements=a.study_measurements)
    assert out.seg is not None and len(out.key_images) == 2
    tool = require_tool("dciodvfy")
    for obj in (out.seg, out.sr, *out.key_images):
        p = subprocess.run([tool, str(obj)], capture_output=True, text=True, timeout=60)
        errors = [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("Error")]
        assert errors == [], f"{obj.name}: {errors}"
    # dcmqi's binaries live in the venv's bin beside the interpreter running the tests
    beside = Path(sys.executable).parent / "segimage2itkimage"
    seg_reader = str(beside) if beside.exists() else require_tool("segimage2itkimage")
    (tmp_path / "dcmqi").mkdir()
    p = subprocess.run([seg_reader, "--inputDICOM", str(out.seg), "--outputDirectory", str(tmp_path / "dcmqi"), "-t", "nii"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    counts = sorted(int(np.asanyarray(nib.load(f).dataobj).astype(bool).sum()) for f in (tmp_path / "dcmqi").glob("*.nii*"))
    assert counts == sorted([int(r.hippocampus_left_mask().sum()), int(r.hippocampus_right_mask().sum())])
    sr = pydicom.dcmread(out.sr)
    values = {round(float(item.MeasuredValueSequence[0].NumericValue), 1)
              for item in _walk_content(sr) if "MeasuredValueSequence" in item}
    assert round(r.hippocampus_left_mm3, 1) in values and round(r.etiv_mm3, 1) in values


def _walk_content(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk_content(item)


# --- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_prints_and_writes_the_volumes(tmp_path: Path):
    p = subprocess.run(
        [sys.executable, "-m", "MedImgAILib", "hippodeep", str(hd_dir() / "example_brain_t1.nii.gz"),
         "--out", str(tmp_path / "out"), "--json", "--weights-dir", str(hd_dir()), "--device", "cpu", "--offline"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["study_measurements"]["etiv_mm3"] == pytest.approx(REF_ETIV_MM3, rel=VOLUME_TOLERANCE)
    assert data["findings"][1]["volume_mm3"] == pytest.approx(REF_HIPPO_R_MM3, rel=VOLUME_TOLERANCE)
    out = tmp_path / "out"
    assert {f.name for f in out.iterdir()} == {
        "findings.json", "volumes.csv", "brain_mask.nii.gz", "cerebrum_mask.nii.gz",
        "hippocampus_left_soft.nii.gz", "hippocampus_right_soft.nii.gz", "hippocampus_labels.nii.gz",
    }
    labels = nib.load(out / "hippocampus_labels.nii.gz")
    ref = nib.load(hd_dir() / "reference" / "example_brain_t1_mask_L.nii.gz")
    np.testing.assert_allclose(labels.affine, ref.affine, atol=1e-4)
    assert dice(np.asanyarray(labels.dataobj) == 1, np.asanyarray(ref.dataobj) >= BINARY_THRESHOLD) >= 0.99
