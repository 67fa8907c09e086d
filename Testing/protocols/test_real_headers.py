"""Real headers (pydicom's CT_small / MR_small, the real GE 3-slice CT) through ``medimgai qc``:
sensible reports, absent values reported as missing, never as a pass."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import pytest
from pydicom.data import get_testdata_file

from Testing.conftest import REPO


@lru_cache(maxsize=None)
def _qc(*args: str) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "qc", *args, "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def _checks(rep: dict) -> dict[str, dict]:
    return {c["name"]: c for c in rep["checks"]}


def test_qc_json_has_the_documented_shape(ct3slice_dir):
    rc, rep = _qc(str(ct3slice_dir), "--protocol", "ct-chest-routine", "--require",
                  "acquisition.convolution_kernel,study.indication")
    assert {"protocol", "matched_by", "conformant", "checks", "image_quality", "metadata_completeness"} <= set(rep)
    assert rep["protocol"]["id"] == "ct-chest-routine" and rep["protocol"]["version"] == "1.0.0"
    for c in rep["checks"]:
        assert {"name", "expected", "actual", "status"} <= set(c)
        assert c["status"] in ("pass", "warn", "fail", "missing", "not_evaluated")
    assert rc == (0 if rep["conformant"] else 1)


def test_real_ge_ct_three_slices(ct3slice_dir):
    _, rep = _qc(str(ct3slice_dir), "--protocol", "ct-chest-routine", "--require",
                 "acquisition.convolution_kernel,study.indication")
    c = _checks(rep)
    assert c["slice_thickness"]["status"] == "pass" and c["slice_thickness"]["actual"] == 1.25
    assert c["kvp"]["actual"] == 120.0
    # the header says 1.25 mm sections, the positions are 1.0 mm apart (FIELD-NOTES): overlapping, fine
    assert c["reconstruction_interval"]["actual"] == pytest.approx(0.8)
    assert c["reconstruction_interval"]["source"] == "derived: slice positions"
    assert c["ctdi_vol"]["status"] == "missing"  # GE did not write CTDIvol into these images
    # an abdominal (colonography) series: no lungs, so the chest coverage requirement fails
    assert c["lung_coverage"]["status"] == "fail"
    assert rep["conformant"] is False
    iq = rep["image_quality"]
    assert 10 < iq["noise_soft_tissue_sd_hu"] < 60
    assert 20 < iq["soft_tissue_hu"] < 80
    assert iq["slice_spacing_median_mm"] == pytest.approx(1.0) and iq["slice_spacing_regular"] is True
    assert iq["noise_air_sd_hu"] is None and any("clipped at -1024" in n for n in iq["notes"])
    mc = rep["metadata_completeness"]
    assert "study.indication" in mc["missing_by"]["model"]
    assert "acquisition.convolution_kernel" in mc["present"]


def test_real_ct_without_protocol_matches_nothing(ct3slice_dir):
    rc, rep = _qc(str(ct3slice_dir))
    assert rc == 1
    assert rep["protocol"] is None and rep["matched_by"] == "none"
    assert "Colonoscopy" in rep["messages"][0] and "--protocol" in rep["messages"][0]


def test_pydicom_ct_small():
    _, rep = _qc(get_testdata_file("CT_small.dcm"), "--protocol", "ct-chest-routine", "--header-only")
    c = _checks(rep)
    assert c["slice_thickness"]["status"] == "warn" and c["slice_thickness"]["actual"] == 5.0
    assert c["kvp"]["status"] == "pass"
    assert c["ctdi_vol"]["status"] == "missing"
    assert c["lung_coverage"]["status"] == "not_evaluated"
    assert rep["image_quality"] == {}


def test_pydicom_mr_small_is_not_a_volumetric_t1():
    _, rep = _qc(get_testdata_file("MR_small.dcm"), "--protocol", "mr-brain-3d-t1-volumetric")
    c = _checks(rep)
    assert c["gradient_echo"]["status"] == "fail" and c["gradient_echo"]["actual"] == "SE"
    assert c["echo_time"]["status"] == "fail"
    assert c["field_strength"]["status"] == "missing"
    assert c["acquisition_3d"]["status"] == "pass"
    assert rep["conformant"] is False


def test_real_series_with_a_gap_fails_spacing(pydicom_testdata):
    # pydicom's dicomdirtests CT2: one slice lies 202.5 mm away from the others (FIELD-NOTES)
    _, rep = _qc(str(pydicom_testdata / "dicomdirtests" / "77654033" / "CT2"), "--protocol", "ct-chest-routine")
    c = _checks(rep)
    assert c["slice_spacing_regular"]["status"] == "fail"
    assert rep["image_quality"]["slice_gaps"] >= 1
    assert rep["image_quality"]["slice_spacing_max_deviation_mm"] > 100
