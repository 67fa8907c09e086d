"""``medimgai protocols list|show`` and ``qc`` on a phantom series written to disk."""

from __future__ import annotations

import json
import subprocess
import sys

from Testing.conftest import REPO
from Testing.protocols.phantom_series import chest_hu, write_ct_series


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MedImgAILib", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_protocols_list_and_show():
    p = _run("protocols", "list", "--json")
    assert p.returncode == 0
    ids = [r["id"] for r in json.loads(p.stdout)]
    assert ids == sorted(ids) and "mr-brain-3d-t1-volumetric" in ids
    p = _run("protocols", "show", "ct-head-noncontrast")
    assert p.returncode == 0
    assert "ctdi_vol" in p.stdout and "80 mGy" in p.stdout and "ACR CT Accreditation" in p.stdout
    p = _run("protocols", "show", "mr-brain-3d-t1-volumetric", "--json")
    doc = json.loads(p.stdout)
    assert doc["version"] == "1.0.0" and doc["changelog"][0]["version"] == "1.0.0"


def test_unknown_protocol_is_one_line_exit_2():
    p = _run("protocols", "show", "ct-knee")
    assert p.returncode == 2
    assert p.stderr.strip().startswith("medimgai: no protocol 'ct-knee'") and "Traceback" not in p.stderr


def test_qc_matches_phantom_series_and_exits_0_when_conformant(tmp_path):
    folder = write_ct_series(chest_hu(25.0, nk=30, lung_slices=(3, 27)), tmp_path / "ldct")
    p = _run("qc", str(folder), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["protocol"]["id"] == "ct-chest-ldct-screening" and rep["matched_by"] == "description"
    assert rep["conformant"] is True
    assert abs(rep["image_quality"]["noise_sd_hu"] - 25.0) < 25.0 * 0.15
    text = _run("qc", str(folder))
    assert text.returncode == 0 and "conformant" in text.stdout and "lung_coverage" in text.stdout


def test_qc_folder_with_two_series_asks_which(tmp_path):
    hu = chest_hu(25.0, nk=6, n=64, lung_slices=(1, 5))
    write_ct_series(hu, tmp_path / "a")
    write_ct_series(hu, tmp_path / "b")
    p = _run("qc", str(tmp_path), "--header-only")
    assert p.returncode == 2 and "--series" in p.stderr and "2 image series" in p.stderr
