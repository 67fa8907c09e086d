"""Fixtures for the PACS suite: real Orthanc and DCMTK dcmqrscp in a loopback-only network namespace.

Tests that talk to those servers request ``in_ns``: the test's thread enters the namespace (see
peers.py), so our pynetdicom client, any listener it starts and any CLI subprocess it runs are in the
namespace with the servers. A missing server binary FAILS the test (require_tool), never skips it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from Testing.conftest import REPO, require_tool

from .peers import Dcmqrscp, NetNs, Orthanc
from .study_data import multi_series_study

#: AE titles and ports inside the namespace (a private namespace per session: no clashes)
OUR_AET = "MEDIMGAI"
MOVE_PORT = 11113  # where a temporary `pacs move --out` listener receives
ORTHANC_PORT, ORTHANC_HTTP = 4242, 8042
FAULT_PORT, FAULT_HTTP = 4300, 8300
DCMQRSCP_PORT = 5678


@pytest.fixture(scope="session")
def netns() -> Iterator[NetNs]:
    require_tool("ip")
    ns = NetNs.create()
    yield ns
    ns.remove()


@pytest.fixture()
def in_ns(netns: NetNs) -> Iterator[NetNs]:
    """Run this test (and what it starts) inside the servers' namespace."""
    with netns.entered():
        yield netns


@pytest.fixture(scope="session")
def study(ct3slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real CT + real SEG + synthetic CT series + Comprehensive 3D SR + Enhanced SR, one study (14 files)."""
    return multi_series_study(ct3slice_dir, tmp_path_factory.mktemp("study"))


def _modalities() -> dict[str, tuple[str, str, int]]:
    return {
        "medimgai": (OUR_AET, "127.0.0.1", MOVE_PORT),
        "listener": ("LISTENER", "127.0.0.1", 11114),
        "getscu": ("GETSCU", "127.0.0.1", 1),
        "findscu": ("FINDSCU", "127.0.0.1", 1),
    }


@pytest.fixture(scope="session")
def orthanc(netns: NetNs, study: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require_tool("Orthanc")
    o = Orthanc(netns, tmp_path_factory.mktemp("orthanc"), port=ORTHANC_PORT, http_port=ORTHANC_HTTP,
                modalities=_modalities())
    o.start()
    o.upload(study["files"])  # through Orthanc's REST API: independent of the code under test
    yield o
    o.stop()


@pytest.fixture()
def fault_orthanc(netns: NetNs, study: dict, tmp_path: Path) -> Iterator[Orthanc]:
    """A second Orthanc for fault tests (paused, killed, restarted) holding the study plus a 60-slice
    series, so a fault lands mid-retrieval."""
    require_tool("Orthanc")
    from .study_data import ct_series

    o = Orthanc(netns, tmp_path / "orthanc", aet="FAULTY", port=FAULT_PORT, http_port=FAULT_HTTP,
                modalities=_modalities())
    o.start()
    extra = ct_series(tmp_path / "extra", 60, size=128, study_uid=study["study_uid"], series_number=12,
                      description="fault series")
    o.upload(study["files"] + extra)
    o.expected = len(study["files"]) + len(extra)  # type: ignore[attr-defined]
    yield o
    o.stop()


@pytest.fixture(scope="session")
def dcmqrscp(netns: NetNs, study: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dcmqrscp]:
    require_tool("dcmqrscp")
    require_tool("storescu")
    q = Dcmqrscp(netns, tmp_path_factory.mktemp("dcmqrscp"), port=DCMQRSCP_PORT,
                 peers={"medimgai": (OUR_AET, "127.0.0.1", MOVE_PORT)})
    q.start()
    q.load(study["files"])
    yield q
    q.stop()


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m MedImgAILib ARGS`` from the repo root (this worktree's library)."""
    return subprocess.run([sys.executable, "-m", "MedImgAILib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)
