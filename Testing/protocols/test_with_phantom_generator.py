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


@pytest.mark.slow
def test_sweep_degrades_a_thin_slice_cohort_with_truth(tmp_path):
    """--cohort: generator series at 1.25 mm with truth.json, degraded to 1.25 and 5 mm at 40 HU."""
    import json as _json
    import subprocess
    import sys

    from Testing.conftest import REPO

    for i in (1, 2):
        write_phantom_series(PhantomSpec(seed=i, random_nodules=RandomNodules(count=3, diameter_range_mm=(6, 12), types=["solid"],
                                                                               shapes=["sphere"], juxtapleural_fraction=0.0),
                                         acquisition=AcquisitionSpec(matrix=256, slice_thickness_mm=1.25, noise_sd_hu=5.0,
                                                                     kernel="standard")), tmp_path / "cohort" / f"c{i}")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "protocol", "sweep", "--model", "classical-threshold",
                        "--cohort", str(tmp_path / "cohort"), "--vary", "slice_thickness=1.25,5", "--vary", "noise=40",
                        "--cases", "5", "--out", str(out), "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = {r["slice_thickness_mm"]: r for r in _json.loads(p.stdout)}
    assert rows[1.25]["cases"] == 2 and rows[1.25]["lesions"] == 6
    assert rows[1.25]["sensitivity"] >= rows[5.0]["sensitivity"]
    assert rows[1.25]["fp_per_scan"] <= rows[5.0]["fp_per_scan"]
    doc = _json.loads((out / "sweep.json").read_text())
    assert doc["case_source"].startswith("cohort")


def test_degrade_matches_noise_to_the_target():
    from MedImgAILib.protocols.sweep import AcquisitionSetting, degrade

    case = generate_phantom(PhantomSpec(seed=3, random_nodules=RandomNodules(count=0), acquisition=AcquisitionSpec(
        matrix=128, slice_thickness_mm=1.25, noise_sd_hu=20.0, kernel="standard")))
    v = degrade(case.volume, AcquisitionSetting(slice_thickness_mm=2.5, noise_hu=40.0, kernel="standard"), match_noise=True)
    assert measure_ct(v)["noise_sd_hu"] == pytest.approx(40.0, rel=0.15)
    quiet = degrade(case.volume, AcquisitionSetting(slice_thickness_mm=1.25, noise_hu=5.0), match_noise=True)
    assert "exceeds" in quiet.extra["noise_note"]
