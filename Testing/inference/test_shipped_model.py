"""The shipped ct-lung-nodule model on phantoms it never saw in training."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from MedImgAILib.inference.evaluation import score_case
from MedImgAILib.inference.phantom_data import TEST_SEED_START, phantom_case
from MedImgAILib.volume import Volume

from ..conftest import REPO


def test_infer_cli_finds_the_nodules_of_a_dicom_phantom_series(tmp_path):
    """`medimgai infer SERIES_DIR` on a real DICOM series written by the phantom generator."""
    from MedImgAILib.phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, write_phantom_series

    spec = PhantomSpec(seed=TEST_SEED_START + 501,
                       random_nodules=RandomNodules(count=3, diameter_range_mm=(8.0, 14.0), types=["solid"]),
                       acquisition=AcquisitionSpec(matrix=192, fov_mm=320.0, slice_thickness_mm=2.5, kernel="sharp"))
    case = write_phantom_series(spec, tmp_path / "series", keep_volume=False)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "infer", str(tmp_path / "series"), "--model", "ct-lung-nodule",
                        "--out", str(out), "--device", "cpu", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "inference.json").read_text())
    assert summary["device"].startswith("cpu") and summary["timings_s"]["total"] > 0
    assert summary["model"]["weights_sha256"] and summary["not_for_clinical_use"] is True
    lab = Volume.from_nifti(nib.load(out / "labels.nii.gz"))
    # the label map lies on the series' own grid
    assert lab.array.shape == case.labels.shape
    assert np.allclose(lab.affine, case.affine, atol=1e-3)
    nodules = [{"center_lps_mm": n["center_lps_mm"], "diameter_mm": n["equivalent_diameter_mm"], "volume_mm3": n["volume_mm3"]}
               for n in case.truth["nodules"]]
    lut = np.zeros(256, np.uint8)
    for i, n in enumerate(case.truth["nodules"], start=1):
        lut[n["label_value"]] = i
    sc = score_case(lab.array, lab.affine, nodules, lut[case.labels])
    assert all(n["detected"] for n in sc["nodules"]), sc
    # card 1.3.0 (0.25 FP/scan on 2.5 mm test phantoms, 1.25 overall; card 1.2.0: 1.75 and 3.1); the bound
    # leaves a margin for this one case and should come down with the figures
    assert sc["false_positives"] <= 15, sc
    # volumes: the card reports a median |error| of ~38 % (1.3.0); single nodules are off by up to ~60 %
    assert all(0.3 * n["volume_mm3"] < n["predicted_volume_mm3"] < 2.5 * n["volume_mm3"] for n in sc["nodules"]), sc


@pytest.mark.parametrize("thickness,kernel,noise", [(1.0, "soft", "low"), (5.0, "sharp", "high")])
def test_nodules_not_vessels_across_acquisitions(thickness, kernel, noise):
    from MedImgAILib.inference import run_model

    case = phantom_case(TEST_SEED_START + 601, slice_thickness_mm=thickness, kernel=kernel, noise=noise, matrix=160,
                        fov_mm=300.0, nodules=3, diameter_range_mm=(8.0, 16.0))
    res = run_model("ct-lung-nodule", case.volume, device="cpu")
    assert res.labels.array.shape == case.volume.array.shape
    sc = score_case(res.labels.array, case.volume.affine, case.nodules, case.nodule_label_map)
    assert sum(n["detected"] for n in sc["nodules"]) >= len(sc["nodules"]) - (1 if thickness >= 5 else 0), sc
    # card 1.3.0 (0.25-0.75 FP/scan on 0.625-2.5 mm slices, ~3.8 on 5 mm; this 5 mm sharp, low-dose case
    # measured 20 (19 with card 1.2.0, 41 with 1.1.0), the 1 mm case 1 (1.2.0: 3)): vessels and airway
    # walls on thick noisy slices are still its weak point; the bounds guard against getting worse
    assert sc["false_positives"] <= (30 if thickness >= 5 else 8), sc
