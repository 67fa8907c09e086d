"""Reference-free image quality: the noise estimate tracks the phantom's true noise within 15%, CT
numbers come out where the phantom put them, MR SNR follows the Rayleigh background model, and the
measures say when they cannot be computed instead of guessing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from MedImgAILib.protocols.quality import measure_ct, measure_image_quality, measure_mr, slice_spacing_regularity
from MedImgAILib.protocols.sweep import AcquisitionSetting, SyntheticChestCases
from MedImgAILib.volume import Volume, affine_from_geometry
from Testing.protocols.phantom_series import chest_hu, volume_of


@pytest.mark.parametrize("noise", [10.0, 30.0, 60.0])
def test_ct_noise_tracks_white_noise_within_15_percent(noise):
    iq = measure_ct(volume_of(chest_hu(noise, nk=16, seed=int(noise))))
    assert iq["noise_sd_hu"] == pytest.approx(noise, rel=0.15)
    assert iq["noise_soft_tissue_sd_hu"] == pytest.approx(noise, rel=0.15)
    assert iq["noise_air_sd_hu"] == pytest.approx(noise, rel=0.15)
    assert iq["air_hu"] == pytest.approx(-1000, abs=5)
    assert iq["soft_tissue_hu"] == pytest.approx(40, abs=5)


@pytest.fixture(scope="module")
def synthetic_cases():
    return SyntheticChestCases(seed=3, nodules_per_case=2, z_extent_mm=32.0)


@pytest.mark.parametrize("kernel", ["soft", "standard", "sharp"])
@pytest.mark.parametrize("noise", [10.0, 30.0, 60.0])
def test_ct_noise_tracks_kernel_textured_noise_within_15_percent(synthetic_cases, kernel, noise):
    # correlated (kernel-filtered) noise on the sweep phantom, with nodules and vessels in the lungs
    case = synthetic_cases(AcquisitionSetting(slice_thickness_mm=1.25, noise_hu=noise, kernel=kernel), 0)
    iq = measure_ct(case.volume)
    assert iq["noise_sd_hu"] == pytest.approx(noise, rel=0.15)


def test_clipped_air_is_reported_not_measured():
    hu = np.maximum(chest_hu(60.0, nk=12), -1024.0)  # a scanner that stores nothing below -1024
    iq = measure_ct(volume_of(hu))
    assert iq["noise_air_sd_hu"] is None
    assert any("clipped" in n for n in iq["notes"])
    assert iq["noise_sd_hu"] == pytest.approx(60.0, rel=0.15)  # soft tissue still measures it


def test_ct_lung_coverage():
    covered = measure_ct(volume_of(chest_hu(20.0)))
    assert covered["lungs_fully_covered"] is True
    assert covered["lung_volume_ml"] == pytest.approx(362, rel=0.1)  # two 45x60x16 mm half-axis ellipsoids
    cut = measure_ct(volume_of(chest_hu(20.0, lung_slices=(10, 50))))
    assert cut["lungs_fully_covered"] is False
    assert cut["lung_area_first_slice_mm2"] == 0 and cut["lung_area_last_slice_mm2"] > 1000


def test_slice_spacing_regularity():
    assert slice_spacing_regularity([0, 1, 2, 3, 4])["slice_spacing_regular"] is True
    gap = slice_spacing_regularity([0, 1, 2, 4, 5])
    assert gap["slice_spacing_regular"] is False and gap["slice_gaps"] == 1
    dup = slice_spacing_regularity([0, 1, 1, 2, 3])
    assert dup["slice_spacing_regular"] is False and dup["slice_duplicates"] == 1
    assert slice_spacing_regularity([5.0])["slice_spacing_regular"] is None


def _mr_head(sigma: float, signal: float = 200.0, n: int = 80, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[0:n, 0:n, 0:n]
    head = ((i - n / 2) / (0.3 * n)) ** 2 + ((j - n / 2) / (0.38 * n)) ** 2 + ((k - n / 2) / (0.33 * n)) ** 2 <= 1
    s = np.where(head, signal, 0.0)
    # magnitude of complex data with Gaussian noise in both channels: Rayleigh background
    mag = np.hypot(s + rng.normal(0, sigma, s.shape), rng.normal(0, sigma, s.shape)).astype(np.float32)
    return Volume(array=mag, affine=affine_from_geometry((0, 0, 0), (1.2, 1.2, 1.2), np.eye(3)), modality="MR")


@pytest.mark.parametrize("sigma", [5.0, 10.0, 25.0])
def test_mr_snr_from_rayleigh_background(sigma):
    iq = measure_mr(_mr_head(sigma))
    assert iq["background_noise_sigma"] == pytest.approx(sigma, rel=0.15)
    assert iq["snr"] == pytest.approx(200.0 / sigma, rel=0.15)


def test_mr_zero_filled_background_is_not_guessed(shared):
    # the hippodeep example T1 is preprocessed: its background is exactly zero
    img = nib.load(shared / "models" / "hippodeep" / "example_brain_t1.nii.gz")
    iq = measure_image_quality(Volume.from_nifti(img, modality="MR"))
    assert iq["snr"] is None
    assert any("zero-filled" in n for n in iq["notes"])
    assert iq["signal_mean"] > 0
    assert iq["slice_spacing_regular"] is True and iq["slice_spacing_median_mm"] == pytest.approx(1.75)
