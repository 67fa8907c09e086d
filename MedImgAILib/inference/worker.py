"""Inference in a child process, so a UI never blocks and Cancel really stops the work.

Worker side: ``python -m MedImgAILib.inference.worker --model ID --input PATH --out DIR [--device D]``
prints one JSON object per line on stdout::

    {"event": "started", "pid": 123, "model": "ct-lung-nodule"}
    {"event": "progress", "stage": "infer", "fraction": 0.42, "message": "window batch 5/12"}
    {"event": "done", "outputs": {...}, "summary": {...}}
    {"event": "error", "kind": "weights", "message": "..."}       (exit status 2)

Client side: :class:`InferenceWorker` starts it in a new session (its own process group), reads the
lines on a thread into a queue the UI polls with a timer, and ``cancel()`` kills the whole process
tree (SIGTERM, then SIGKILL to the group): killing only the launcher would leave grandchildren (an
external nnU-Net command, data loaders) running.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m MedImgAILib.inference.worker")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--offline", action="store_true")
    ap.add_argument("--probabilities", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from ..errors import MedImgAIError
    from .engine import load_input, run_model
    from .runners import RunOptions

    _emit({"event": "started", "pid": os.getpid(), "model": args.model})
    last = [0.0, ""]

    def progress(stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()  # at most ~10 lines a second, but every stage change
        if stage != last[1] or fraction >= 1.0 or now - last[0] > 0.1:
            last[0], last[1] = now, stage
            _emit({"event": "progress", "stage": stage, "fraction": round(fraction, 4), "message": message})

    try:
        progress("load", 0.0, "reading input")
        volume = load_input(args.input)
        progress("load", 1.0, f"volume {volume.shape_ijk}")
        result = run_model(args.model, volume, device=args.device, weights_dir=args.weights_dir,
                           offline=True if args.offline else None, progress=progress,
                           options=RunOptions(num_threads=args.threads, return_probabilities=args.probabilities))
        paths = result.write(args.out, probabilities=args.probabilities)
        _emit({"event": "done", "outputs": {k: str(v) for k, v in paths.items()}, "summary": result.summary()})
        return 0
    except MedImgAIError as exc:
        _emit({"event": "error", "kind": exc.kind, "message": str(exc)})
        return 2
    except Exception as exc:  # a worker must always say why it stopped
        _emit({"event": "error", "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        return 1


class InferenceWorker:
    """Start, poll and cancel a worker process. ``events`` is a ``queue.Queue`` of parsed lines."""

    def __init__(self, model: str, input_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 device: Optional[str] = None, weights_dir: Optional[str] = None, extra_args: Sequence[str] = (),
                 env: Optional[dict[str, str]] = None, python: str = sys.executable):
        self.argv = [python, "-m", "MedImgAILib.inference.worker", "--model", model, "--input", str(input_path),
                     "--out", str(out_dir)]
        if device:
            self.argv += ["--device", device]
        if weights_dir:
            self.argv += ["--weights-dir", str(weights_dir)]
        self.argv += list(extra_args)
        self.env = env
        self.events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.proc: Optional[subprocess.Popen] = None
        self.stderr_tail: list[str] = []
        self._threads: list[threading.Thread] = []

    def start(self, cwd: str | os.PathLike[str] | None = None) -> "InferenceWorker":
        # the library must be importable in the child: run from the package's parent directory
        cwd = cwd or str(Path(__file__).resolve().parents[2])
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True, cwd=cwd, env=self.env)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"event": "log", "message": line})

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-50:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> list[dict[str, Any]]:
        """Events that arrived since the last poll (non-blocking: call it from a UI timer)."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: Optional[float] = None) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def cancel(self, grace_s: float = 3.0) -> None:
        """Kill the worker and everything it started."""
        if self.proc is None:
            return
        import psutil

        from .runners import kill_process_tree

        # descendants that started their own session (an external command does, so that it can be
        # cancelled on its own) are outside the worker's process group: collect them first
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        kill_process_tree(self.proc, grace_s=grace_s)
        for p in descendants:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(descendants, timeout=grace_s)
        for t in self._threads:
            t.join(timeout=5)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(worker_main())
