"""`medimgai train` is reproducible: the same seed gives the same weights, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from MedImgAILib.inference.training import TrainConfig, train_lung_nodule

from ..conftest import REPO


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path):
    cfg = dict(cases=1, steps=2, batch=1, patch=32)
    a = train_lung_nodule(TrainConfig(seed=3, **cfg), tmp_path / "a", log=lambda m: None)
    b = train_lung_nodule(TrainConfig(seed=3, **cfg), tmp_path / "b", log=lambda m: None)
    assert a["sha256"] == b["sha256"]
    assert a["acquisitions"] == b["acquisitions"]


@pytest.mark.slow
def test_phantom_sets_are_the_single_set_recipes_and_reproducible(tmp_path):
    """``data_seeds=[3]`` trains on exactly the phantoms of a one-set run with ``seed=3`` (so cached
    phantoms of earlier runs are reused), and noise augmentation, checkpoints, border patches and
    per-patch Dice keep runs bit-exact."""
    cfg = dict(cases=1, steps=2, batch=1, patch=32)
    single = train_lung_nodule(TrainConfig(seed=3, **cfg), tmp_path / "s", log=lambda m: None)
    # with the 1.3.0 stage's options too: patches up to the border and Dice per patch
    multi = dict(cfg, data_seeds=[3], noise_aug=0.02, checkpoint_every=1, jitter=0.5, dice_per_patch=True)
    a = train_lung_nodule(TrainConfig(seed=5, **multi), tmp_path / "a", log=lambda m: None)
    b = train_lung_nodule(TrainConfig(seed=5, **multi), tmp_path / "b", log=lambda m: None)
    assert a["acquisitions"] == single["acquisitions"]
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a" / "checkpoint-1.pt").is_file()


def _sample(shape=(40, 40, 40)):
    from MedImgAILib.inference.training import _Sample

    img = np.zeros(shape, np.float16)
    tgt = np.zeros(shape, np.uint8)
    empty = np.zeros((0, 3), int)
    return _Sample(img, tgt, empty, np.zeros(0, int), empty, empty)


def _offsets(jitter: float, size: int = 32, draws: int = 400) -> np.ndarray:
    """Where the drawn voxel lands in the patch: mark it in the target and find it again (flips undone)."""
    from MedImgAILib.inference.training import _patch

    s = _sample()
    centre = np.array([20, 20, 20])
    s.target[tuple(centre)] = 1
    rng = np.random.default_rng(0)
    pos = []
    for _ in range(draws):
        _, tgt = _patch(s, centre, size, rng, jitter=jitter)
        hit = np.argwhere(tgt)
        if len(hit):
            pos.append(hit[0])
    return np.asarray(pos)


def test_jitter_half_puts_the_drawn_voxel_up_to_the_patch_border():
    """Sliding windows cut nodules anywhere; --jitter 0.5 trains on that, 0.25 keeps them inward."""
    inner = _offsets(0.25)
    assert len(inner) == 400 and inner.min() >= 32 // 4 - 1 and inner.max() <= 32 - 32 // 4
    edge = _offsets(0.5)
    # ~1/33 of draws per axis fall just outside the patch; the rest spread over the whole patch
    assert 300 < len(edge) < 400
    assert edge.min() == 0 and edge.max() == 31
    assert (np.minimum(edge, 31 - edge).min(axis=1) <= 2).mean() > 0.3  # near a border on some axis


def test_default_jitter_draws_as_the_earlier_recipes():
    """jitter 0.25 consumes the generator exactly as the 1.0.0-1.2.0 code (size // 4): same weights."""
    from MedImgAILib.inference.training import _patch

    s = _sample()
    s.image[:] = np.random.default_rng(1).random(s.image.shape).astype(np.float16)
    a = _patch(s, np.array([20, 20, 20]), 32, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    c = np.array([20, 20, 20]) + rng.integers(-(32 // 4), 32 // 4 + 1, size=3)
    lo = c - 16
    expect = np.zeros((32, 32, 32), np.float32)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(lo + 32, 40)
    expect[tuple(slice(a0 - l, b0 - l) for a0, b0, l in zip(src_lo, src_hi, lo))] = \
        s.image[tuple(slice(a0, b0) for a0, b0 in zip(src_lo, src_hi))]
    for ax in range(3):
        if rng.random() < 0.5:
            expect = np.flip(expect, ax)
    expect = expect * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)
    assert np.array_equal(a[0], expect)


@pytest.mark.parametrize("args,message", [(["--patch", "20"], "multiple of 8"), (["--jitter", "0.7"], "0-0.5")])
def test_train_cli_refuses_bad_patch_options(tmp_path, args, message):
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "train", "ct-lung-nodule", "--out", str(tmp_path), *args],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_train_cli_takes_the_border_patch_options(tmp_path):
    """The 1.3.0 stage's options reach the run through the CLI and are recorded in training.json."""
    p = subprocess.run([sys.executable, "-m", "MedImgAILib", "train", "ct-lung-nodule", "--seed", "3", "--cases", "1",
                        "--steps", "2", "--batch", "2", "--patch", "32", "--jitter", "0.5", "--dice-per-patch",
                        "--per-nodule-sampling", "--threads", "1", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    cfg = json.loads((tmp_path / "training.json").read_text())["config"]
    assert cfg == result["config"]
    assert (cfg["patch"], cfg["jitter"], cfg["dice_per_patch"], cfg["per_nodule_sampling"], cfg["threads"]) == (32, 0.5, True, True, 1)
    assert (tmp_path / "ct-lung-nodule.pt").stat().st_size == result["size_bytes"]
