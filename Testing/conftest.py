"""Fixtures shared by every suite.

Real parts only: Orthanc, DCMTK, dciodvfy, slicer-core, torch/MONAI. A test that needs a tool which is
not installed FAILS (``require_tool``): CI must never go green by skipping the real peers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """../shared beside the checkout (the session's and CI's layout), or $MEDIMGAI_SHARED."""
    env = os.environ.get("MEDIMGAI_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"required tool {name!r} is not installed (.ci/run installs it; see README)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if not d.is_dir():
        pytest.fail(f"shared material not found at {d}; set MEDIMGAI_SHARED", pytrace=False)
    return d


@pytest.fixture(scope="session")
def ct3slice_dir(shared: Path) -> Path:
    return shared / "data" / "real" / "ct-3slice"


@pytest.fixture(scope="session")
def pydicom_testdata() -> Path:
    """pydicom's shipped test files (the wheel carries them)."""
    import pydicom.data

    return Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    return require_tool("dciodvfy")
