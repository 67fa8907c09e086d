"""What mr-hippocampus refuses, and the weights it will not use.

Given a CT (pydicom's real CT_small, a chest-CT-like volume), a T2 or FLAIR series, a thin slab or
a NIfTI without orientation, a user gets one clear line saying why, never volumes; given a weights
file whose sha256 differs from the card's, the model does not load.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pydicom.data

from MedImgAILib.dicom.mr_series_writer import MRAcquisition, write_mr_series
from MedImgAILib.errors import MedImgAIError, WeightsError
from MedImgAILib.models.hippodeep import HippodeepModel, UnsupportedInputError, check_input, load_t1
from MedImgAILib.models.hippodeep.inputs import ImageInputError
from MedImgAILib.models.hippodeep.model import load_card_data, weight_files
from MedImgAILib.volume import Volume
from Testing.conftest import REPO, shared_dir

HD = shared_dir() / "models" / "hippodeep"


@pytest.fixture(scope="module")
def t1() -> Volume:
    return load_t1(HD / "example_brain_t1.nii.gz")


@pytest.fixture(scope="module")
def model() -> HippodeepModel:
    return HippodeepModel.load(weights_dir=HD, device="cpu", offline=True)


def chest_ct_like(offset_hu: float = 0.0) -> Volume:
    """A body-sized ellipse of soft tissue with two air-filled lungs, in HU, 1.5 x 1.5 x 2.5 mm."""
    rng = np.random.default_rng(7)
    k, j, i = np.mgrid[0:100, 0:200, 0:200]
    a = np.full((100, 200, 200), -1000.0, np.float32)
    a[((i - 100) / 90.0) ** 2 + ((j - 100) / 60.0) ** 2 < 1] = 40.0
    lungs = (((i - 60) / 30.0) ** 2 + ((j - 95) / 40.0) ** 2 < 1) | (((i - 140) / 30.0) ** 2 + ((j - 95) / 40.0) ** 2 < 1)
    a[lungs] = -850.0
    a += rng.normal(0, 20, a.shape).astype(np.float32)
    return Volume(array=a + np.float32(offset_hu), affine=np.diag([1.5, 1.5, 2.5, 1.0]))


# --- refused before the model runs ----------------------------------------------------------------
@pytest.fixture
def ct_small(tmp_path) -> Path:
    """pydicom's real CT slice, alone in a folder (as a user would point at one)."""
    (tmp_path / "ct").mkdir()
    return Path(shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), tmp_path / "ct" / "CT_small.dcm"))


def test_real_ct_file_is_refused_by_modality(ct_small):
    with pytest.raises(UnsupportedInputError, match="modality CT"):
        check_input(load_t1(ct_small))


@pytest.mark.slow
def test_phantom_chest_ct_series_is_refused(tmp_path):
    from MedImgAILib.phantoms.generate import write_phantom_series
    from MedImgAILib.phantoms.spec import AcquisitionSpec, PhantomSpec

    write_phantom_series(PhantomSpec(acquisition=AcquisitionSpec(matrix=96, slice_thickness_mm=5.0)), tmp_path / "chest")
    v = load_t1(tmp_path / "chest")
    with pytest.raises(UnsupportedInputError, match=f"series {v.series_instance_uid} has modality CT"):
        check_input(v)
    # the same voxels without any header (as a NIfTI conversion would be): the HU values refuse it
    bare = Volume(array=v.array, affine=v.affine)
    with pytest.raises(UnsupportedInputError, match="Hounsfield"):
        check_input(bare)


def test_chest_ct_volume_is_refused(t1):
    with pytest.raises(UnsupportedInputError, match="modality CT"):
        check_input(chest_ct_like().with_array(chest_ct_like().array, modality="CT"))
    # the same voxels with no modality (a NIfTI conversion): Hounsfield units give it away
    with pytest.raises(UnsupportedInputError, match="Hounsfield"):
        check_input(chest_ct_like())


@pytest.mark.parametrize(
    "acq, match",
    [
        (MRAcquisition(series_description="T2 SPACE sag", protocol_name="t2_space", scanning_sequence=["SE"],
                       sequence_variant=["SK"], inversion_time_ms=None, echo_time_ms=400.0, repetition_time_ms=3200.0), "T2"),
        (MRAcquisition(series_description="3D FLAIR", protocol_name="flair_3d", scanning_sequence=["SE", "IR"],
                       inversion_time_ms=1800.0, echo_time_ms=390.0, repetition_time_ms=5000.0), "FLAIR"),
        # neutral names: the acquisition parameters tell
        (MRAcquisition(series_description="3D sag", protocol_name="3d", scanning_sequence=["SE"], sequence_variant=["SK"],
                       inversion_time_ms=None, echo_time_ms=95.0, repetition_time_ms=3000.0), "echo time 95 ms"),
        (MRAcquisition(series_description="3D sag", protocol_name="3d", scanning_sequence=["SE", "IR"],
                       inversion_time_ms=2500.0, echo_time_ms=20.0, repetition_time_ms=9000.0), "inversion time 2500 ms"),
    ],
)
def test_non_t1_mr_series_is_refused(t1, tmp_path, acq, match):
    write_mr_series(t1, tmp_path / "s", "sagittal", acquisition=acq)
    v = load_t1(tmp_path / "s")
    with pytest.raises(UnsupportedInputError, match=match) as exc:
        check_input(v)
    assert v.series_instance_uid in str(exc.value)  # names the series


def test_t1_series_names_are_accepted(t1, tmp_path):
    acq = MRAcquisition(series_description="Sag T1 FLAIR MPRAGE", protocol_name="t1_mprage_sag_p2_iso")
    write_mr_series(t1, tmp_path / "s", "sagittal", acquisition=acq)
    assert check_input(load_t1(tmp_path / "s")) == [
        "voxels of 1.75 mm are coarser than the protocol's 1-1.5 mm (mr-brain-3d-t1-volumetric); volumes are less precise"
    ]


def test_thin_slab_and_coarse_voxels_are_refused(t1):
    slab = Volume(array=np.ascontiguousarray(t1.array[30:50]), affine=t1.affine)
    with pytest.raises(UnsupportedInputError, match="3D volume"):
        check_input(slab)
    coarse = Volume(array=t1.array, affine=t1.affine @ np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(UnsupportedInputError, match="at most 3 mm"):
        check_input(coarse)


def test_nifti_without_orientation_is_refused(tmp_path):
    img = nib.load(HD / "example_brain_t1.nii.gz")
    bad = nib.Nifti1Image(np.asanyarray(img.dataobj), None)
    bad.header.set_qform(None, code=0)
    bad.header.set_sform(None, code=0)
    nib.save(bad, tmp_path / "noorient.nii.gz")
    with pytest.raises(ImageInputError, match="neither qform_code nor sform_code"):
        load_t1(tmp_path / "noorient.nii.gz")


def test_nifti_qform_is_used_and_sform_ignored(tmp_path, t1):
    """As the original: a valid but different sform does not move the image (SPEC.md 5.1)."""
    img = nib.load(HD / "example_brain_t1.nii.gz")
    shifted = img.get_qform().copy()
    shifted[:3, 3] += 25.0
    other = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header)
    other.set_sform(shifted, code=2)
    nib.save(other, tmp_path / "sform.nii.gz")
    v = load_t1(tmp_path / "sform.nii.gz")
    np.testing.assert_allclose(v.affine, t1.affine, atol=1e-5)


# --- refused after the head network looked at it -------------------------------------------------
@pytest.mark.slow
def test_ct_with_offset_intensities_is_refused_by_the_plausibility_checks(model):
    """A chest CT shifted to positive values (as some converters store it) passes the header and
    intensity checks; what the head network finds (no plausible skull contents) refuses it."""
    with pytest.raises(UnsupportedInputError, match="does not look like a T1-weighted MR"):
        model.analyze(chest_ct_like(offset_hu=1024.0))


# --- weights --------------------------------------------------------------------------------------
def test_weights_with_a_wrong_sha256_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMGAI_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "weights"
    d.mkdir()
    for f in ("params_head_00075_00000.pt", "paramsaffineta_00079_00000.pt", "hippodeep.pt"):
        shutil.copy(HD / f, d / f)
    data = bytearray((d / "hippodeep.pt").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside a tensor
    (d / "hippodeep.pt").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256") as exc:
        HippodeepModel.load(weights_dir=d, device="cpu", offline=True)
    assert "hippodeep.pt" in str(exc.value) and "38d9340ad960958618fd6235385a9a20f8d7c1840696e6180dac7598847e1846" in str(exc.value)


def test_missing_weights_offline_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMGAI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="github.com/bthyreau/hippodeep_pytorch/raw/310305fe"):
        HippodeepModel.load(weights_dir=tmp_path, device="cpu", offline=True)


def test_card_lists_the_published_files():
    card = load_card_data()
    files = weight_files(card)
    assert {f.filename for f in files.values()} == {"params_head_00075_00000.pt", "paramsaffineta_00079_00000.pt", "hippodeep.pt"}
    for f in files.values():
        assert f.url.startswith("https://github.com/bthyreau/hippodeep_pytorch/raw/310305fe5a928b1da3e98e7c1384490881690593/")
        assert (HD / f.filename).stat().st_size == f.size_bytes
    assert card["required_protocols"] == ["mr-brain-3d-t1-volumetric"]
    assert card["weights"]["licence"] == "MIT" and "10.1016/j.media.2017.11.004" in card["source"]


def test_cli_refuses_ct_in_one_line(ct_small):
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "hippodeep", str(ct_small), "--weights-dir", str(HD), "--offline"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "modality CT" in p.stderr
    assert "Traceback" not in p.stderr


def test_errors_are_medimgai_errors():
    assert issubclass(UnsupportedInputError, MedImgAIError) and issubclass(ImageInputError, MedImgAIError)


def test_the_cards_protocol_recognises_the_written_t1_series(t1, tmp_path):
    """The card's required protocol is in the protocol library, picks out the T1 MPRAGE series the
    converter writes, and finds what this module also warns about: 1.75 mm voxels (protocol <= 1.5)."""
    from MedImgAILib.protocols.conformance import check_series
    from MedImgAILib.protocols.library import default_library

    card = load_card_data()
    write_mr_series(t1, tmp_path / "s", "sagittal")
    v = load_t1(tmp_path / "s")
    match = default_library().match(v.metadata, candidates=card["required_protocols"])
    assert match is not None and match.protocol.id == "mr-brain-3d-t1-volumetric"
    report = check_series(v.metadata, v, match.protocol.id)
    failed = [c.name for c in report.checks if c.status == "fail"]
    assert failed == ["voxel_size"]
