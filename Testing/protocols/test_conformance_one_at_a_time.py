"""Given a phantom LDCT series that meets the ACR screening parameters, changing one acquisition
property at a time flags exactly that criterion, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedImgAILib.protocols import check_series
from MedImgAILib.protocols.seriesdir import find_series, load_series_volume
from Testing.protocols.phantom_series import chest_hu, write_ct_series

PROTOCOL = "ct-chest-ldct-screening"


def _report(folder: Path, image_quality=None):
    s = find_series(folder)
    vol = None if image_quality is not None else load_series_volume(s)
    return check_series(s.metadata, vol, PROTOCOL, slice_positions_mm=s.slice_positions_mm,
                        image_quality=image_quality)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    hu = chest_hu(noise_hu=30.0)
    folder = write_ct_series(hu, tmp_path_factory.mktemp("ldct") / "base")
    return hu, _report(folder)


def test_baseline_phantom_conforms(baseline):
    _, rep = baseline
    assert rep.conformant, rep.summary_line()
    assert {c.status for c in rep.checks} == {"pass"}, rep.summary_line()
    assert rep.matched_by == "given"


def _changed(base, rep):
    before = {c.name: c.status for c in base.checks}
    return {c.name: c.status for c in rep.checks if before[c.name] != c.status}


# header changes: (criterion, header edits, expected status)
HEADER_CASES = [
    ("slice_thickness", {"SliceThickness": 3.0}, "fail"),
    ("slice_thickness", {"SliceThickness": 2.0}, "warn"),  # within 2.5 mm but above the preferred 1.0
    ("kvp", {"KVP": 80}, "fail"),
    ("ctdi_vol", {"CTDIvol": 5.2}, "warn"),
    ("pitch", {"SpiralPitchFactor": 1.9}, "warn"),
    ("no_contrast", {"ContrastBolusAgent": "IOHEXOL 350"}, "fail"),
]


@pytest.mark.parametrize("criterion,edits,status", HEADER_CASES, ids=[f"{c[0]}-{c[2]}" for c in HEADER_CASES])
def test_header_violation_flags_only_that_criterion(baseline, tmp_path, criterion, edits, status):
    hu, base = baseline
    # slice thickness 2.0/3.0 mm over 1.0 mm positions keeps interval/thickness <= 1, so only thickness moves
    rep = _report(write_ct_series(hu, tmp_path / "s", header=edits), image_quality=base.image_quality)
    assert _changed(base, rep) == {criterion: status}
    assert rep.conformant is (status != "fail")


def test_reconstruction_interval_larger_than_thickness_fails(baseline, tmp_path):
    hu, base = baseline
    # 0.8 mm sections reconstructed every 1.0 mm: gaps between sections
    rep = _report(write_ct_series(hu, tmp_path / "s", header={"SliceThickness": 0.8}), image_quality=base.image_quality)
    assert _changed(base, rep) == {"reconstruction_interval": "fail"}
    assert not rep.conformant


def test_missing_header_value_is_missing_not_pass(baseline, tmp_path):
    hu, base = baseline
    rep = _report(write_ct_series(hu, tmp_path / "s", drop=["KVP"]), image_quality=base.image_quality)
    assert _changed(base, rep) == {"kvp": "missing"}
    assert not rep.conformant
    assert "acquisition.kvp" in rep.metadata_completeness.missing


def test_coarse_pixels_warn(baseline, tmp_path):
    hu, base = baseline
    rep = _report(write_ct_series(hu, tmp_path / "s", header={"PixelSpacing": [1.2, 1.2]}),
                  image_quality=base.image_quality)
    assert _changed(base, rep) == {"in_plane_pixel": "warn"}


# pixel changes
def test_lungs_cut_off_fails_coverage(baseline, tmp_path):
    _, base = baseline
    hu = chest_hu(noise_hu=30.0, lung_slices=(-6, 30))  # apices above the first slice
    rep = _report(write_ct_series(hu, tmp_path / "s"))
    assert _changed(base, rep) == {"lung_coverage": "fail"}
    assert rep.image_quality["lung_area_first_slice_mm2"] > 1000
    assert rep.image_quality["lung_area_last_slice_mm2"] == 0


def test_missing_slice_fails_spacing_regularity(baseline, tmp_path):
    hu, base = baseline
    keep = [k for k in range(hu.shape[0]) if k != 20]
    rep = _report(write_ct_series(hu[keep], tmp_path / "s", positions_z=[k * 1.0 for k in keep]))
    assert _changed(base, rep) == {"slice_spacing_regular": "fail"}
    assert rep.image_quality["slice_gaps"] == 1


def test_high_noise_warns(baseline, tmp_path):
    _, base = baseline
    rep = _report(write_ct_series(chest_hu(noise_hu=110.0), tmp_path / "s"))
    assert _changed(base, rep) == {"noise": "warn"}
    assert rep.image_quality["noise_sd_hu"] == pytest.approx(110.0, rel=0.15)


def test_air_calibration_offset_warns(baseline, tmp_path):
    hu, base = baseline
    shifted = hu.copy()
    shifted[hu < -950] += 80.0  # air reads -920 HU: a calibration fault
    rep = _report(write_ct_series(shifted, tmp_path / "s"))
    assert _changed(base, rep) == {"air_ct_number": "warn"}
    assert rep.image_quality["air_hu"] == pytest.approx(-920, abs=5)


def test_streaky_slice_warns(baseline, tmp_path):
    hu, base = baseline
    streaky = hu.copy()
    rng = np.random.default_rng(5)
    streaky[18] += rng.normal(0, 90.0, streaky[18].shape).astype(np.float32)  # one photon-starved slice
    rep = _report(write_ct_series(streaky, tmp_path / "s"))
    assert _changed(base, rep) == {"streaks": "warn"}


def test_patient_movement_step_warns(baseline, tmp_path):
    _, base = baseline
    hu = chest_hu(noise_hu=30.0, shift_from_k=20, shift_mm=12.0)
    rep = _report(write_ct_series(hu, tmp_path / "s"))
    assert _changed(base, rep) == {"motion": "warn"}
