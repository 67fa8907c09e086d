"""The subprocess worker: JSON progress lines, results on disk, and Cancel that leaves nothing running."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from MedImgAILib.inference.worker import InferenceWorker

from . import tiny_models as tm
from .conftest import blob_volume, dice


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes (waiting for its parent to reap it)
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def _env(models_dir: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, MEDIMGAI_MODELS_PATH=str(models_dir), MEDIMGAI_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def test_worker_runs_a_model_and_reports_json_progress(tmp_path):
    w = tm.make_state_dict(tmp_path / "tiny.pt")
    tm.write_card(tmp_path, tm.card_dict("tiny-native", "native", settings={"network": "Testing.inference.tiny_models:ThresholdNet"}, weights=w))
    vol, truth = blob_volume((24, 30, 28), (1.0, 1.0, 1.5), np.eye(3), (-14, -15, -18), radius_mm=6)
    inp = tmp_path / "in.nii.gz"
    nib.save(vol.to_nifti(), inp)
    worker = InferenceWorker("tiny-native", inp, tmp_path / "out", device="cpu", env=_env(tmp_path, tmp_path / "cache")).start()
    rc = worker.wait(timeout=120)
    events = worker.poll()
    assert rc == 0, worker.stderr_tail
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert {e["stage"] for e in events if e["event"] == "progress"} >= {"load", "preprocess", "infer", "postprocess"}
    lab = nib.load(tmp_path / "out" / "labels.nii.gz")
    assert np.allclose(lab.affine, vol.to_nifti().affine)
    assert dice(np.asarray(lab.dataobj).transpose(2, 1, 0) == 1, truth) > 0.9
    assert (tmp_path / "out" / "inference.json").is_file()
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_worker_error_is_one_json_line(tmp_path):
    worker = InferenceWorker("no-such-model", tmp_path / "missing.nii.gz", tmp_path / "out",
                             env=_env(tmp_path, tmp_path / "cache")).start()
    assert worker.wait(timeout=120) == 2
    events = worker.poll()
    assert events[-1]["event"] == "error" and "does not exist" in events[-1]["message"]


def test_cancel_kills_the_worker_and_its_grandchildren(tmp_path):
    s = tm.make_external_script(tmp_path / "slow.py")
    pidfile = tmp_path / "grandchild.pid"
    tm.write_card(tmp_path, tm.card_dict("tiny-slow", "external",
                                         settings={"command": "{python} " + f"{s} {{input}} {{output}} 600 {pidfile}"}))
    vol, _ = blob_volume((8, 16, 16), (1, 1, 1))
    inp = tmp_path / "in.nii.gz"
    nib.save(vol.to_nifti(), inp)
    worker = InferenceWorker("tiny-slow", inp, tmp_path / "out", device="cpu", env=_env(tmp_path, tmp_path / "cache")).start()
    t0 = time.monotonic()
    while not (pidfile.exists() and pidfile.read_text().endswith("\n")):
        assert worker.running(), worker.stderr_tail
        assert time.monotonic() - t0 < 120
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    # the external command (the worker's child) is running, and its own child too
    assert alive(grandchild)
    worker.cancel()
    assert not worker.running()
    assert wait_gone(worker.pid) and wait_gone(grandchild)
    assert not (tmp_path / "out" / "labels.nii.gz").exists()
