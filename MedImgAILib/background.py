"""Run long work in a child process and watch it without blocking: the parent side of the worker
protocol (the child prints one JSON object per line on stdout: ``{"event": "progress", "fraction": 0.4,
"message": "..."}``, ``{"event": "result", ...}``, ``{"event": "error", "message": "..."}``).

A reader thread collects the lines; a UI polls ``poll()`` from a timer (Slicer: ``qt.QTimer``), so it
never waits on the child. ``cancel()`` ends the whole process tree: the child starts its own session,
and killing only the launcher would leave a worker running.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


@dataclass
class WorkerEvent:
    event: str  # "progress" | "log" | "result" | "error" | "exit"
    data: dict[str, Any] = field(default_factory=dict)


class BackgroundProcess:
    def __init__(self, argv: Sequence[str], cwd: Optional[str] = None, env: Optional[dict[str, str]] = None) -> None:
        self.argv = list(argv)
        self.started_at = time.monotonic()
        self._events: "queue.Queue[WorkerEvent]" = queue.Queue()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, so cancel() reaches every descendant
        )
        self._stderr_tail: list[str] = []
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()
        self.cancelled = False
        self.returncode: Optional[int] = None

    @classmethod
    def python_module(cls, module: str, *args: str, **kw: Any) -> "BackgroundProcess":
        return cls([sys.executable, "-m", module, *args], **kw)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
                ev = WorkerEvent(event=str(data.pop("event", "log")), data=data)
            except json.JSONDecodeError:
                ev = WorkerEvent(event="log", data={"message": line})
            self._events.put(ev)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr_tail = (self._stderr_tail + [line.rstrip()])[-50:]
            self._events.put(WorkerEvent(event="log", data={"message": line.rstrip(), "stream": "stderr"}))

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def running(self) -> bool:
        return self.proc.poll() is None

    def poll(self) -> list[WorkerEvent]:
        """Every event since the last call; an ``exit`` event once the child has ended and its output
        has been read."""
        out: list[WorkerEvent] = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        if self.returncode is None and self.proc.poll() is not None:
            self._out.join(timeout=2)
            self._err.join(timeout=2)
            while True:
                try:
                    out.append(self._events.get_nowait())
                except queue.Empty:
                    break
            self.returncode = self.proc.returncode
            out.append(WorkerEvent(event="exit", data={"returncode": self.returncode, "cancelled": self.cancelled,
                                                       "stderr_tail": self._stderr_tail[-5:]}))
        return out

    def cancel(self, grace_s: float = 3.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s``."""
        if self.proc.poll() is not None:
            return
        self.cancelled = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def wait(self, timeout: Optional[float] = None) -> list[WorkerEvent]:
        """Block until the child ends (for scripts and tests; a UI uses ``poll``)."""
        self.proc.wait(timeout=timeout)
        return self.poll()


def emit(event: str, **data: Any) -> None:
    """Child side: one JSON line on stdout, flushed at once so the parent sees progress as it happens."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()
