"""What the Analyze panel shows while the worker runs: states, progress, log, elapsed time, cancel.

The worker here is a real child Python process speaking the ``--progress-json`` protocol (events on
stdout) the way ``medimgai analyze`` does; the panel only ever calls ``poll()`` from its timer.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from MedImgAILib.scene.jobs import (
    CANCELLING, DONE, FAILED, IDLE, IMPORTING, RUNNING, AnalysisJob, ThreadTask, analyze_argv, link_series_files,
)

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from MedImgAILib.background import emit
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    emit("progress", fraction=0.1, message="loading series on " + os.environ.get("MEDIMGAI_DEVICE", "auto"))
    if "--fail" in sys.argv:
        emit("error", message="series 1.2.3 has 2 slices at the same position z=-120.0")
        sys.exit(2)
    if "--crash" in sys.argv:
        raise RuntimeError("worker crashed")
    for i in range(2, 5):
        time.sleep(float(os.environ.get("STEP_S", "0.05")))
        emit("progress", fraction=i / 5, message=f"step {i}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.json").write_text("{}")
    emit("result", findings_json=str(out / "findings.json"))
    """
)


def _job(tmp_path, *extra, device="auto", env=None) -> AnalysisJob:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    argv = [sys.executable, str(script), "--out", str(tmp_path / "out"), *extra]
    return AnalysisJob(argv, tmp_path / "out", device=device, env={"PYTHONPATH": str(REPO), **(env or {})})


def _until(job: AnalysisJob, states, timeout=30.0):
    seen, log = [], []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = job.poll()
        log += st.log
        seen.append((st.state, st.fraction))
        if st.state in states:
            return st, seen, log
        time.sleep(0.02)
    raise AssertionError(f"job never reached {states}: {seen[-3:]}")


def test_argv_is_the_analyze_command_with_progress_events():
    argv = analyze_argv("/data/series", "ct-lung-nodule", "/tmp/out", context="screening=true, exam=baseline",
                        send_to="pacs", python="/opt/Slicer/bin/PythonSlicer")
    assert argv == ["/opt/Slicer/bin/PythonSlicer", "-m", "MedImgAILib", "analyze", "/data/series", "--model",
                    "ct-lung-nodule", "--out", "/tmp/out", "--progress-json", "--context",
                    "screening=true, exam=baseline", "--send", "pacs"]
    assert "--context" not in analyze_argv("s", "m", "o", context="  ")


def test_progress_then_importing_with_the_result_folder(tmp_path):
    job = _job(tmp_path, device="cpu")
    assert job.poll().state == RUNNING and job.active
    st, seen, log = _until(job, {IMPORTING, FAILED})
    assert st.state == IMPORTING and st.fraction == 1.0
    assert st.result_dir == tmp_path / "out" and (st.result_dir / "findings.json").is_file()
    fractions = [f for s, f in seen if s == RUNNING]
    assert fractions == sorted(fractions)  # progress only goes forward
    assert any("loading series on cpu" in line for line in log)  # the device reached the worker
    assert st.elapsed_s > 0
    job.imported()
    assert job.status.state == DONE and not job.active


def test_a_result_that_cannot_be_shown_ends_the_job_as_failed(tmp_path):
    job = _job(tmp_path)
    st, _, _ = _until(job, {IMPORTING, FAILED})
    job.import_failed("instance map instances.nii.gz is not on the grid of series 1.2.3")
    st = job.poll()
    assert st.state == FAILED and not job.active and "not on the grid" in st.error


def test_worker_error_is_shown_as_its_message(tmp_path):
    st, _, log = _until(_job(tmp_path, "--fail"), {FAILED, IMPORTING})
    assert st.state == FAILED and st.error == "series 1.2.3 has 2 slices at the same position z=-120.0"
    assert any(line.startswith("error:") for line in log)


def test_a_crash_without_an_error_event_shows_the_last_stderr_line(tmp_path):
    st, _, _ = _until(_job(tmp_path, "--crash"), {FAILED, IMPORTING})
    assert st.state == FAILED and "RuntimeError: worker crashed" in st.error


def test_cancel_ends_the_worker_and_returns_to_idle(tmp_path):
    job = _job(tmp_path, env={"STEP_S": "5"})
    _until(job, {RUNNING})
    t0 = time.monotonic()
    job.cancel()
    assert job.status.state in (CANCELLING, IDLE)
    st, _, _ = _until(job, {IDLE, FAILED, IMPORTING}, timeout=10)
    assert st.state == IDLE and st.message == "cancelled"
    assert time.monotonic() - t0 < 5  # did not wait for the step to finish
    assert job.proc.proc.poll() is not None
    assert not (tmp_path / "out" / "findings.json").exists()


def test_link_series_files_makes_a_one_series_folder(tmp_path):
    src = tmp_path / "db"
    src.mkdir()
    files = []
    for n in range(3):
        f = src / f"x{n}"
        f.write_bytes(bytes([n]))
        files.append(f)
    out = link_series_files(files, tmp_path / "series")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000.dcm", "00001.dcm", "00002.dcm"]
    assert (out / "00002.dcm").read_bytes() == b"\x02"
    link_series_files(files[:1], out)  # again: replaces, does not fail
    assert (out / "00000.dcm").read_bytes() == b"\x00"


def test_thread_task_returns_the_result_or_the_error():
    ok = ThreadTask(lambda a, b: a + b, 2, 3)
    assert ok.wait(5) == (True, 5, None, None)

    def failing():
        raise ValueError("no such node")

    done, result, error, _ = ThreadTask(failing).wait(5)
    assert done and result is None and isinstance(error, ValueError)

    def with_progress(n, on_progress):
        for i in range(n):
            on_progress(i + 1, n)
        return n

    t = ThreadTask(with_progress, 4, with_progress=True)
    assert t.wait(5)[3] == (4, 4)
