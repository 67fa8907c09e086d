"""``medimgai series-info``: the JSON contract other tools read, and its failure mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from Testing.conftest import REPO
from Testing.dicom_synth import write_series


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "MedImgAILib", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_series_info_json_contract_on_real_ct(ct3slice_dir: Path) -> None:
    p = run_cli("series-info", str(ct3slice_dir), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    (s,) = doc["series"]
    assert set(s) >= {"series_instance_uid", "modality", "size", "spacing", "origin", "direction", "stats", "warnings", "metadata"}
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(ct3slice_dir), s["series_instance_uid"]))
    img = r.Execute()
    assert s["modality"] == "CT"
    assert s["size"] == list(img.GetSize())
    np.testing.assert_allclose(s["spacing"], img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(s["origin"], img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(s["direction"], img.GetDirection(), atol=1e-6)
    a = sitk.GetArrayFromImage(img)
    assert s["stats"] == {"min": float(a.min()), "max": float(a.max()), "mean": s["stats"]["mean"]}
    assert abs(s["stats"]["mean"] - float(a.mean())) < 1e-6
    assert any("SliceThickness 1.25 mm" in w for w in s["warnings"])
    md = s["metadata"]
    assert "identifiers" not in md  # public_dict: no PHI
    assert md["acquisition"]["slice_thickness_mm"]["value"] == 1.25
    assert doc["skipped"][0]["error"] == "not an image series (Segmentation)"
    assert "PatientName" not in p.stdout and "patient_name" not in p.stdout


def test_series_info_direction_columns_are_ijk_axes(tmp_path: Path) -> None:
    s = write_series(tmp_path, size=(6, 5, 4), row=(0.0, 1.0, 0.0), col=(0.0, 0.0, -1.0), spacing=(0.5, 0.6, 3.0))
    p = run_cli("series-info", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    (d,) = json.loads(p.stdout)["series"]
    m = np.asarray(d["direction"]).reshape(3, 3)
    np.testing.assert_allclose(m[:, 0], [0, 1, 0])  # i (columns) runs along the row cosines
    np.testing.assert_allclose(m[:, 1], [0, 0, -1])  # j (rows) along the column cosines
    np.testing.assert_allclose(m[:, 2], [-1, 0, 0])  # k along row x column: (0,1,0) x (0,0,-1)
    assert d["size"] == [6, 5, 4] and d["spacing"] == [0.5, 0.6, 3.0]
    assert d["series_instance_uid"] == s.series_uid
    assert d["stats"]["min"] == float(s.values.min()) and d["stats"]["max"] == float(s.values.max())


def test_series_info_without_series_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    p = run_cli("series-info", str(tmp_path), "--json")
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no DICOM series" in lines[0] and "1 file(s) skipped" in lines[0]
    p = run_cli("series-info", str(tmp_path / "missing"))
    assert p.returncode == 2 and "does not exist" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_series_info_only_broken_series_says_why(pydicom_testdata: Path) -> None:
    p = run_cli("series-info", str(pydicom_testdata / "MR_truncated.dcm"))
    assert p.returncode == 2
    assert "truncated file" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_series_info_table(pydicom_testdata: Path) -> None:
    p = run_cli("series-info", str(pydicom_testdata / "dicomdirtests" / "77654033"))
    assert p.returncode == 0, p.stderr
    assert "16x16x4" in p.stdout and "uneven slice spacing" in p.stdout
