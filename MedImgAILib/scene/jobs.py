"""Long work the Slicer panels start and poll from a timer, so the UI never blocks (no Qt here).

- ``AnalysisJob``: ``python -m MedImgAILib analyze SOURCE --model ID --out DIR --progress-json`` in a
  worker process (``background.BackgroundProcess``), turned into the panel's processing state
  (idle / running / importing / cancelling / failed / done), progress fraction, log lines and elapsed
  time. Cancel ends the whole process tree.
- ``ThreadTask``: a quick-but-networked call (PACS echo / query / retrieve) on a thread, polled the
  same way.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..background import BackgroundProcess, WorkerEvent

IDLE, RUNNING, IMPORTING, CANCELLING, FAILED, DONE = "idle", "running", "importing", "cancelling", "failed", "done"


def analyze_argv(
    source: str | os.PathLike[str],
    model_id: str,
    out_dir: str | os.PathLike[str],
    *,
    context: str = "",
    send_to: str = "",
    python: Optional[str] = None,
) -> list[str]:
    """The worker's command line (``python`` is the interpreter: PythonSlicer inside Slicer)."""
    argv = [python or sys.executable, "-m", "MedImgAILib", "analyze", str(source), "--model", model_id,
            "--out", str(out_dir), "--progress-json"]
    if context.strip():
        argv += ["--context", context.strip()]
    if send_to:
        argv += ["--send", send_to]
    return argv


def link_series_files(files: Sequence[str | os.PathLike[str]], folder: str | os.PathLike[str]) -> Path:
    """A folder holding exactly one series' files (symbolic links where the system allows, copies
    otherwise): the worker's SOURCE when the series came from Slicer's DICOM database."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for n, f in enumerate(files):
        dest = out / f"{n:05d}.dcm"
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        try:
            dest.symlink_to(Path(f).resolve())
        except OSError:  # Windows without the symlink privilege
            shutil.copy2(f, dest)
    return out


@dataclass
class JobStatus:
    state: str = IDLE
    fraction: float = 0.0
    message: str = ""
    elapsed_s: float = 0.0
    #: new log lines since the previous poll
    log: list[str] = field(default_factory=list)
    error: str = ""
    #: the output folder once the worker reported its result (findings.json inside)
    result_dir: Optional[Path] = None


class AnalysisJob:
    """One analysis in a worker process. ``poll()`` never waits; call it from a timer."""

    def __init__(self, argv: Sequence[str], out_dir: str | os.PathLike[str], *, device: str = "auto",
                 cwd: Optional[str] = None, env: Optional[dict[str, str]] = None) -> None:
        self.out_dir = Path(out_dir)
        env = dict(env or {})
        if device and device != "auto":
            env["MEDIMGAI_DEVICE"] = device  # the inference stage's device preference
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.status = JobStatus(state=RUNNING, message="starting")
        self.proc = BackgroundProcess(argv, cwd=cwd, env=env)
        self._findings_json: Optional[str] = None

    @classmethod
    def start(cls, source: str | os.PathLike[str], model_id: str, out_dir: str | os.PathLike[str], *,
              device: str = "auto", context: str = "", send_to: str = "", python: Optional[str] = None,
              cwd: Optional[str] = None, env: Optional[dict[str, str]] = None) -> "AnalysisJob":
        argv = analyze_argv(source, model_id, out_dir, context=context, send_to=send_to, python=python)
        return cls(argv, out_dir, device=device, cwd=cwd, env=env)

    @property
    def active(self) -> bool:
        return self.status.state in (RUNNING, CANCELLING)

    def _apply(self, ev: WorkerEvent) -> None:
        st = self.status
        if ev.event == "progress":
            st.fraction = float(ev.data.get("fraction", st.fraction) or 0.0)
            st.message = str(ev.data.get("message", st.message))
            st.log.append(f"{100 * st.fraction:5.1f}%  {st.message}")
        elif ev.event == "result":
            self._findings_json = str(ev.data.get("findings_json") or "")
            st.log.append("result written")
        elif ev.event == "error":
            st.error = str(ev.data.get("message", "the analysis failed"))
            st.log.append(f"error: {st.error}")
        elif ev.event == "log":
            st.log.append(str(ev.data.get("message", "")))
        elif ev.event == "exit":
            rc = ev.data.get("returncode")
            if self.proc.cancelled:
                st.state, st.message = IDLE, "cancelled"
            elif rc == 0 and self._findings_json is not None:
                st.state, st.fraction, st.message = IMPORTING, 1.0, "importing results"
                found = Path(self._findings_json) if self._findings_json else self.out_dir / "findings.json"
                st.result_dir = found.parent if found.name == "findings.json" else self.out_dir
            else:
                st.state = FAILED
                if not st.error:
                    tail = [t for t in ev.data.get("stderr_tail", []) if t.strip()]
                    st.error = tail[-1] if tail else f"the worker exited with status {rc} without a result"
                st.message = st.error

    def poll(self) -> JobStatus:
        """Apply every event since the last poll; the returned status carries only the new log lines."""
        self.status.log = []
        for ev in self.proc.poll():
            self._apply(ev)
        self.status.elapsed_s = self.proc.elapsed_s
        return self.status

    def cancel(self) -> None:
        """Ends the worker and everything it started (the panel shows "cancelling" until then)."""
        if self.status.state == RUNNING:
            self.status.state, self.status.message = CANCELLING, "cancelling"
            self.proc.cancel()

    def imported(self) -> None:
        """The panel has built the review scene from the result."""
        self.status.state, self.status.message = DONE, "done"

    def import_failed(self, error: str) -> None:
        """The result could not be shown (the panel reports why); the job ends as failed."""
        self.status.state, self.status.error, self.status.message = FAILED, error, error


class ThreadTask:
    """``fn(*args, progress=callback)`` (or ``fn(*args)``) on a daemon thread; ``poll()`` returns
    (done, result, error, progress)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, with_progress: bool = False, **kw: Any) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.progress: Any = None
        self.cancel_event = threading.Event()
        self.started_at = time.monotonic()
        if with_progress:
            kw["on_progress"] = self._on_progress
        self._thread = threading.Thread(target=self._run, args=(fn, args, kw), daemon=True)
        self._thread.start()

    def _on_progress(self, *info: Any) -> None:
        self.progress = info

    def _run(self, fn: Callable[..., Any], args: tuple, kw: dict) -> None:
        try:
            self.result = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread, which reports it
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def poll(self) -> tuple[bool, Any, Optional[BaseException], Any]:
        return self.done, self.result, self.error, self.progress

    def wait(self, timeout: Optional[float] = None) -> tuple[bool, Any, Optional[BaseException], Any]:
        self._thread.join(timeout)
        return self.poll()
