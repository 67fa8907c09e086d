"""The checks against the project's chest phantom generator (``MedImgAILib.phantoms``): its truth says
what the noise is and whether the lungs are covered; the LDCT preset written as DICOM is matched to the
screening protocol and conforms, and a series with a missing slice is flagged for exactly that."""

from __future__ import annotations

import pytest

from MedImgAILib.phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, generate_phantom, spec_from_preset, write_phantom_series
from MedImgAILib.protocols import check_series
from MedImgAILib.protocols.quality import measure_ct
from MedImgAILib.protocols.seriesdir import find_series, load_series_volume


@pytest.mark.parametrize("noise,kernel", [(10.0, "soft"), (30.0, "standard"), (60.0, "sharp")])
def test_noise_tracks_generator_truth_within_15_percent(noise, kernel):
    case = generate_phantom(PhantomSpec(seed=int(noise), random_nodules=RandomNodules(count=0), acquisition=AcquisitionSpec(
        matrix=128, slice_thickness_mm=5.0, noise_sd_hu=noise, kernel=kernel)))
    iq = measure_ct(case.volume)
    truth = case.truth["noise_sd_hu"]
    assert iq["noise_sd_hu"] == pytest.approx(truth, rel=0.15)
    assert iq["noise_air_sd_hu"] == pytest.approx(truth, rel=0.15)
    assert iq["air_hu"] == pytest.approx(-1000, abs=10)
    assert iq["lungs_fully_covered"] is case.truth["anatomy"]["lungs_fully_covered"] is True


def test_lung_coverage_agrees_with_generator_truth_when_the_bases_are_cut():
    case = generate_phantom(PhantomSpec(seed=1, random_nodules=RandomNodules(count=0), acquisition=AcquisitionSpec(
        matrix=128, slice_thickness_mm=5.0, noise_sd_hu=20.0, slices=30)))
    assert case.truth["anatomy"]["lungs_fully_covered"] is False
    iq = measure_ct(case.volume)
    assert iq["lungs_fully_covered"] is False
    assert iq["lung_area_last_slice_mm2"] > 0 or iq["lung_area_first_slice_mm2"] > 0


@pytest.fixture(scope="module")
def ldct_spec():
    spec = spec_from_preset("ldct-screening")
    return spec.model_copy(update=dict(seed=5, acquisition=spec.acquisition.model_copy(
        update=dict(matrix=256, slice_thickness_mm=2.5, reconstruction_interval_mm=2.5))))


def _check(folder):
    s = find_series(folder)
    return check_series(s.metadata, load_series_volume(s), slice_positions_mm=s.slice_positions_mm)


def test_generator_ldct_preset_conforms_to_the_screening_protocol(ldct_spec, tmp_path):
    case = write_phantom_series(ldct_spec, tmp_path / "ldct")
    rep = _check(tmp_path / "ldct")
    assert rep.protocol.id == "ct-chest-ldct-screening" and rep.matched_by == "description"
    assert rep.conformant, rep.summary_line()
    # 2.5 mm sections are allowed but above the preferred 1.0 mm; 380 mm / 256 = 1.48 mm pixels warn
    assert {c.name: c.status for c in rep.checks if c.status != "pass"} == {"slice_thickness": "warn", "in_plane_pixel": "warn"}
    assert rep.image_quality["noise_sd_hu"] == pytest.approx(case.truth["noise_sd_hu"], rel=0.15)
    assert rep.metadata_completeness.missing == []


def test_generator_series_with_a_missing_slice_fails_spacing_only(ldct_spec, tmp_path):
    write_phantom_series(ldct_spec.model_copy(update=dict(omit_slices=[20])), tmp_path / "gap")
    rep = _check(tmp_path / "gap")
    assert {c.name: c.status for c in rep.checks if c.status != "pass"} == {
        "slice_thickness": "warn", "in_plane_pixel": "warn", "slice_spacing_regular": "fail"}
    assert rep.image_quality["slice_gaps"] == 1 and not rep.conformant
