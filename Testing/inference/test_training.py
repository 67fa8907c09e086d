"""`medimgai train` is reproducible: the same seed gives the same weights, bit for bit."""

from __future__ import annotations

import pytest

from MedImgAILib.inference.training import TrainConfig, train_lung_nodule


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path):
    cfg = dict(cases=1, steps=2, batch=1, patch=32)
    a = train_lung_nodule(TrainConfig(seed=3, **cfg), tmp_path / "a", log=lambda m: None)
    b = train_lung_nodule(TrainConfig(seed=3, **cfg), tmp_path / "b", log=lambda m: None)
    assert a["sha256"] == b["sha256"]
    assert a["acquisitions"] == b["acquisitions"]
