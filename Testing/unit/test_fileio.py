"""Atomic outputs and the NIfTI writer (ISA-L gzip) against the readers people use: nibabel, SimpleITK
and Python's own gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MedImgAILib.fileio import atomic_output, save_nifti
from MedImgAILib.volume import Volume


def _volume(dtype=np.uint8) -> Volume:
    rng = np.random.default_rng(3)
    arr = np.zeros((7, 11, 13), dtype)
    arr[2:5, 3:8, 4:9] = rng.integers(1, 200, size=(3, 5, 5)).astype(dtype)
    affine = np.array([[0.7, 0, 0, -120.0], [0, 0.7, 0, -95.5], [0, 0, 2.5, 31.25], [0, 0, 0, 1]])
    return Volume(array=arr, affine=affine)


@pytest.mark.parametrize("name", ["map.nii.gz", "map.nii"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_save_nifti_round_trips_through_nibabel_and_simpleitk(tmp_path: Path, name: str, dtype) -> None:
    vol = _volume(dtype)
    path = save_nifti(vol.to_nifti(), tmp_path / name)
    assert path == tmp_path / name
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left beside it

    back = Volume.from_nifti(nib.load(str(path)))
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine)

    img = sitk.ReadImage(str(path))  # ITK's reader (Slicer's) sees the same voxels and geometry
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.array)
    np.testing.assert_allclose(img.GetSpacing(), (0.7, 0.7, 2.5))
    # LPS origin from the RAS-stored affine
    np.testing.assert_allclose(img.GetOrigin(), (-120.0, -95.5, 31.25))
    if name.endswith(".gz"):
        with gzip.open(path) as fh:  # an ordinary gzip stream
            assert fh.read(4) == (348).to_bytes(4, "little")  # NIfTI-1 header size


def test_save_nifti_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "labels.nii.gz"
    save_nifti(_volume().to_nifti(), target)
    before = target.read_bytes()

    class Broken:
        def to_stream(self, fh) -> None:
            fh.write(b"half a header")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        save_nifti(Broken(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_atomic_output_creates_the_folder_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_output(target, "w") as fh:
        fh.write("one")
    with atomic_output(target, "w") as fh:
        fh.write("two")
        assert target.read_text() == "one"  # the old content until the new one is complete
    assert target.read_text() == "two"
