"""The physicist's what-if sweep: on a small run, detection gets worse and measurements less accurate
as slices get thicker, and the outputs (CSV, JSON, PNG) are written whole."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from MedImgAILib.protocols.sweep import (
    AcquisitionSetting,
    SweepError,
    SyntheticChestCases,
    TruthLesion,
    degrade,
    parse_vary,
    resolve_detector,
    run_sweep,
    score_case,
    settings_grid,
    threshold_detector,
    write_sweep_outputs,
)
from MedImgAILib.results import Finding
from Testing.conftest import REPO


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """3 thicknesses x 2 noise levels x 2 cases of 4 nodules (5, 6, 8, 12 mm), in process."""
    out = tmp_path_factory.mktemp("sweep")
    vary = parse_vary(["slice_thickness=0.625,2.5,5", "noise=10,60"])
    result = run_sweep(settings_grid(vary), 2, SyntheticChestCases(seed=0, pixel_mm=1.0), threshold_detector,
                       model_id="classical-threshold", case_source="synthetic", varied=vary)
    write_sweep_outputs(result, out)
    return out, result.settings


def test_sweep_writes_csv_json_and_plots(sweep_run):
    out, rows = sweep_run
    assert len(rows) == 6
    with open(out / "sweep.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and {"sensitivity", "fp_per_scan", "volume_error_pct_mean_abs", "diameter_error_mm_mean_abs"} <= set(table[0])
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["schema"] == "medimgai.protocol-sweep/1" and doc["model"] == "classical-threshold"
    assert len(doc["per_case"]) == 12
    for name in ("sensitivity.png", "fp_per_scan.png", "volume_error.png", "diameter_error.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(out.glob("*.partial"))


def test_sweep_trends_are_monotone_sensible(sweep_run):
    """Marginal trends (each factor averaged over the other): with 8 nodules per setting a single
    borderline nodule flips a cell, so cells are noisy; the margins are what a physicist reads."""
    _, rows = sweep_run
    by = {(r["slice_thickness_mm"], r["noise_hu"]): r for r in rows}
    thick, noise = (0.625, 2.5, 5.0), (10.0, 60.0)

    def margin(metric, over, fixed_is_thickness):
        return [sum(by[(f, o) if fixed_is_thickness else (o, f)][metric] for o in over) / len(over)
                for f in (thick if fixed_is_thickness else noise)]

    sens = margin("sensitivity", noise, True)
    vol = margin("volume_error_pct_mean_abs", noise, True)
    diam = margin("diameter_error_mm_mean_abs", noise, True)
    fp = margin("fp_per_scan", noise, True)
    assert all(by[(0.625, n)]["sensitivity"] == 1.0 for n in noise)  # thin slices: every 5-12 mm nodule
    assert sens[0] >= sens[1] >= sens[2] and sens[2] < 1.0  # partial volume loses the 5 mm ones
    assert vol[0] < vol[1] < vol[2]
    assert diam[0] < diam[1] < diam[2]
    assert fp[0] <= fp[2]
    # more noise does not help (margins over thickness)
    s_noise = margin("sensitivity", thick, False)
    assert s_noise[1] <= s_noise[0]


def test_degrade_keeps_geometry_and_sets_noise():
    truth, _ = SyntheticChestCases(seed=2, nodules_per_case=1, z_extent_mm=30.0)._truth(0)
    v = degrade(truth, AcquisitionSetting(slice_thickness_mm=2.5, noise_hu=30.0, kernel="sharp"), seed=1)
    assert v.spacing[2] == pytest.approx(2.5)
    assert v.array.shape[0] == truth.array.shape[0] // 8
    # the first thick slice is centred on the mean of the 8 thin slices it averages
    assert v.origin[2] == pytest.approx(truth.origin[2] + 3.5 * truth.spacing[2])
    air = v.array[:, :10, :10]
    assert air.std() == pytest.approx(30.0, rel=0.1)
    with pytest.raises(SweepError, match="whole multiple"):
        degrade(truth, AcquisitionSetting(slice_thickness_mm=1.0), seed=1)


def test_detector_finds_the_phantom_nodules_on_thin_slices():
    cases = SyntheticChestCases(seed=4, nodules_per_case=3, z_extent_mm=40.0)
    case = cases(AcquisitionSetting(slice_thickness_mm=0.625, noise_hu=20.0), 0)
    found = threshold_detector(case.volume)
    score = score_case(case.case_id, found, case.lesions)
    assert (score.tp, score.fn, score.fp) == (3, 0, 0)
    for d_true, vol_err, d_err in score.matched:
        assert abs(vol_err) < 25 and abs(d_err) < 1.0


def test_scoring_matches_each_lesion_once():
    lesions = [TruthLesion([0, 0, 0], 6.0, 113.1), TruthLesion([30, 0, 0], 8.0, 268.1)]
    findings = [Finding(id="F1", label="nodule", center_lps_mm=[1, 0, 0], volume_mm3=120.0, mean_diameter_mm=6.1),
                Finding(id="F2", label="nodule", center_lps_mm=[0, 1, 0], volume_mm3=100.0),
                Finding(id="F3", label="nodule", center_lps_mm=[80, 0, 0], volume_mm3=50.0)]
    s = score_case("c", findings, lesions)
    assert (s.tp, s.fn, s.fp) == (1, 1, 2)
    assert s.matched[0][1] == pytest.approx(100 * (120 - 113.1) / 113.1)


def test_vary_parsing_and_unknown_model():
    v = parse_vary(["slice_thickness=0.625,1.25", "noise=10"], kernels=["sharp"])
    assert v == {"slice_thickness_mm": [0.625, 1.25], "noise_hu": [10.0], "kernel": ["sharp"]}
    assert len(settings_grid(v)) == 2
    for bad in (["dose=1"], ["noise=a"], ["slice_thickness"], ["kernel=bone"]):
        with pytest.raises(SweepError):
            parse_vary(bad)
    from MedImgAILib.errors import ModelError

    with pytest.raises(ModelError, match="classical-threshold"):
        resolve_detector("ct-lung-nodule-x")


def test_sweep_cli_runs_and_prints_the_table(tmp_path):
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "protocol", "sweep", "--model", "classical-threshold",
                        "--vary", "slice_thickness=2.5", "--kernel", "soft", "--cases", "1", "--phantom", "synthetic",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "sens" in p.stdout and "soft" in p.stdout
    assert (tmp_path / "sweep.csv").exists() and (tmp_path / "sensitivity.png").exists()


def test_sweep_cli_errors_are_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "protocol", "sweep", "--model", "classical-threshold",
                        "--vary", "thickness=1", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("medimgai: --vary 'thickness'") and "\n" not in p.stderr.strip()


def test_a_shipped_model_card_is_a_sweep_detector(tmp_path):
    """``protocol sweep --model ct-lung-nodule`` runs the real model and the real findings stage."""
    from MedImgAILib.phantoms import NoduleSpec, PhantomSpec, generate_phantom
    from MedImgAILib.phantoms.spec import AcquisitionSpec
    from MedImgAILib.protocols.sweep import resolve_detector

    case = generate_phantom(PhantomSpec(seed=4, nodules=[NoduleSpec(diameter_mm=14.0, side="right")],
                                        acquisition=AcquisitionSpec(matrix=160, fov_mm=340.0, slice_thickness_mm=2.5)))
    detect = resolve_detector("ct-lung-nodule")
    vol = case.volume.with_array(case.volume.array, modality="CT")
    findings = detect(vol)
    truth = case.truth["nodules"][0]
    import numpy as np

    assert findings and all(f.volume_mm3 and f.mean_diameter_mm for f in findings)
    nearest = min(np.linalg.norm(np.subtract(f.center_lps_mm, truth["center_lps_mm"])) for f in findings)
    assert nearest < truth["diameter_mm"] / 2
