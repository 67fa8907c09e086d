from __future__ import annotations

import numpy as np
import pytest

from MedImgAILib.volume import Volume, affine_from_geometry


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def blob_volume(shape_kji, spacing_ijk, direction=np.eye(3), origin=(0.0, 0.0, 0.0),
                centers_lps=((0.0, 0.0, 0.0),), radius_mm: float = 6.0) -> tuple[Volume, np.ndarray]:
    """A volume of 0 with spheres of 1 placed in LPS millimetres; returns it and the truth mask."""
    aff = affine_from_geometry(origin, spacing_ijk, direction)
    k, j, i = np.indices(shape_kji)
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    lps = ijk @ aff[:3, :3].T + aff[:3, 3]
    truth = np.zeros(len(lps), dtype=bool)
    for c in centers_lps:
        truth |= np.linalg.norm(lps - np.asarray(c), axis=1) <= radius_mm
    truth = truth.reshape(shape_kji)
    return Volume(array=truth.astype(np.float32), affine=aff, modality="CT"), truth


def centred_origin(shape_kji, spacing_ijk, direction) -> np.ndarray:
    """Origin that puts LPS (0,0,0) at the volume's centre."""
    half = (np.asarray(shape_kji[::-1]) - 1) / 2.0
    return -(np.asarray(direction) @ (half * np.asarray(spacing_ijk)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture()
def isolated_env(tmp_path, monkeypatch):
    """Cache and registry paths private to the test."""
    monkeypatch.setenv("MEDIMGAI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDIMGAI_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MEDIMGAI_OFFLINE", raising=False)
    monkeypatch.delenv("MEDIMGAI_MODELS_PATH", raising=False)
    from MedImgAILib.inference import engine

    engine._RUNNER_CACHE.clear()
    return tmp_path
