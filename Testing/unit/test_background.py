"""The worker protocol a UI relies on: progress arrives while the child runs; cancel ends the tree."""

import os
import sys
import textwrap
import time

from MedImgAILib.background import BackgroundProcess

CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    from MedImgAILib.background import emit
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    emit("started", grandchild_pid=grandchild.pid)
    for i in range(1, 4):
        emit("progress", fraction=i / 3, message=f"step {i}")
        time.sleep(0.05)
    if "--hang" in sys.argv:
        time.sleep(60)
    grandchild.kill()
    emit("result", findings=2)
    """
)


def _run(tmp_path, *args):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {"PYTHONPATH": os.getcwd()}
    return BackgroundProcess([sys.executable, str(script), *args], env=env)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_progress_then_result_then_exit(tmp_path):
    proc = _run(tmp_path)
    events = proc.wait(timeout=30)
    kinds = [e.event for e in events]
    assert kinds[0] == "started"
    assert [e.data["fraction"] for e in events if e.event == "progress"] == [1 / 3, 2 / 3, 1.0]
    assert kinds[-2:] == ["result", "exit"]
    assert events[-1].data["returncode"] == 0


def test_poll_never_blocks_and_cancel_kills_the_whole_tree(tmp_path):
    proc = _run(tmp_path, "--hang")
    seen = []
    deadline = time.monotonic() + 20
    while not any(e.event == "progress" and e.data["fraction"] == 1.0 for e in seen):
        t0 = time.monotonic()
        seen += proc.poll()
        assert time.monotonic() - t0 < 0.05  # a UI timer tick
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = next(e.data["grandchild_pid"] for e in seen if e.event == "started")
    assert _alive(grandchild)
    proc.cancel(grace_s=2)
    end = proc.poll()
    assert end[-1].event == "exit" and end[-1].data["cancelled"]
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild), "cancel left the worker's child running"
