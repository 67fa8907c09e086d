"""``medimgai rules list | show | apply`` run as a user runs them (a subprocess of this checkout)."""

from __future__ import annotations

import json
import subprocess
import sys

from MedImgAILib.results import AnalysisResult, Finding, ModelRef
from Testing.conftest import REPO


def medimgai(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MedImgAILib", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_list():
    p = medimgai("rules", "list")
    assert p.returncode == 0, p.stderr
    assert "lung-rads" in p.stdout and "v2022" in p.stdout and "fleischner-2017" in p.stdout
    p = medimgai("rules", "list", "--json")
    assert {(r["id"], r["version"]) for r in json.loads(p.stdout)} == {("lung-rads", "v2022"), ("fleischner-2017", "2017")}


def test_show_text_and_json():
    p = medimgai("rules", "show", "fleischner-2017")
    assert p.returncode == 0, p.stderr
    assert "MacMahon" in p.stdout and "fl-solid-single-gt8" in p.stdout and "mean_diameter_mm >8 mm" in p.stdout
    p = medimgai("rules", "show", "lung-rads", "--json")
    data = json.loads(p.stdout)
    assert data["id"] == "lung-rads" and data["schema"] == "medimgai.rules/1"
    assert any(r["id"] == "lr-solid-baseline-4A" for r in data["rows"])


def test_show_unknown_is_one_line_exit_2():
    p = medimgai("rules", "show", "brock")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no rule set 'brock'" in p.stderr and "Traceback" not in p.stderr


def _findings_json(tmp_path):
    result = AnalysisResult(
        study_instance_uid="1.2.3",
        model=ModelRef(id="ct-lung-nodule", version="1"),
        findings=[
            Finding(id="F1", label="nodule", type="solid", mean_diameter_mm=7.96, long_axis_mm=9.0, short_axis_mm=6.92),
            Finding(id="F2", label="nodule", type="ground-glass", mean_diameter_mm=12.2),
        ],
    )
    return result.write(tmp_path / "findings.json")


def test_apply_screening(tmp_path):
    path = _findings_json(tmp_path)
    p = medimgai("rules", "apply", str(path), "--context", "age=64,screening=true,exam=baseline")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "Lung-RADS v2022" in out and "-> 4A" in out and "study: 4A (from F1)" in out
    assert "Fleischner 2017" in out and "not applicable: Fleischner does not apply to lung cancer screening" in out


def test_apply_incidental_json_and_out(tmp_path):
    path = _findings_json(tmp_path)
    out = tmp_path / "with-categories.json"
    p = medimgai("rules", "apply", str(path), "--rules", "fleischner-2017", "--context", "age=50,risk=low", "--json", "--out", str(out))
    assert p.returncode == 0, p.stderr
    (ev,) = json.loads(p.stdout)
    assert ev["study"]["value"] == "Solid single 6-8 mm, low risk"
    assert ev["categories"]["F2"]["value"] == "Ground-glass single >=6 mm"
    written = AnalysisResult.read(out)
    assert written.findings[0].categories[0].value == "Solid single 6-8 mm, low risk"
    assert written.study_categories[0].system == "Fleischner"
    assert [r.model_dump() for r in written.rules] == [{"id": "fleischner-2017", "version": "2017"}]
    assert written.context == {"age_years": 50.0, "risk": "low"}
    assert written.model.id == "ct-lung-nodule"  # the rest of the file is kept


def test_apply_plain_list_of_findings(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"id": "N1", "label": "nodule", "type": "part-solid", "mean_diameter_mm": 9.0,
                                 "solid_core_mean_diameter_mm": 8.0}]))
    p = medimgai("rules", "apply", str(path), "--rules", "lung-rads", "--context", "screening=true")
    assert p.returncode == 0, p.stderr
    assert "study: 4B (from N1)" in p.stdout


def test_apply_bad_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    p = medimgai("rules", "apply", str(bad))
    assert p.returncode == 2 and "is not JSON" in p.stderr and "Traceback" not in p.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"id": "F1", "label": "nodule", "mean_diameter_mm": "big"}]))
    p = medimgai("rules", "apply", str(wrong))
    assert p.returncode == 2 and "finding 0 (F1): field mean_diameter_mm: Input should be a valid number" in p.stderr
    p = medimgai("rules", "apply", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "cannot read findings file" in p.stderr
    p = medimgai("rules", "apply", str(_findings_json(tmp_path)), "--context", "risk=medium")
    assert p.returncode == 2 and "risk='medium': expected low or high" in p.stderr
