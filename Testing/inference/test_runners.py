"""Every runner kind, end to end, on a real (tiny) network, and outputs on the exact source grid."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from MedImgAILib.errors import CancelledError
from MedImgAILib.inference import RunOptions, run_model
from MedImgAILib.models import load_card

from . import tiny_models as tm
from .conftest import blob_volume, centred_origin, dice, rotation


def _card(tmp: Path, kind: str, **kw):
    if kind == "native":
        w = tm.make_state_dict(tmp / "tiny.pt")
        d = tm.card_dict("tiny-native", "native", settings={"network": "Testing.inference.tiny_models:ThresholdNet"}, weights=w, **kw)
    elif kind == "torchscript":
        w = tm.make_torchscript(tmp / "tiny.ts")
        d = tm.card_dict("tiny-ts", "torchscript", weights=w, **kw)
    elif kind == "bundle-zip":
        w = tm.zip_dir(tm.make_bundle(tmp), tmp / "tiny_bundle.zip")
        d = tm.card_dict("tiny-bundle-zip", "bundle", weights=w, **kw)
    elif kind == "bundle-dir":
        b = tm.make_bundle(tmp)
        d = tm.card_dict("tiny-bundle-dir", "bundle", settings={"bundle_dir": str(b)}, **kw)
    elif kind == "external":
        s = tm.make_external_script(tmp / "ext.py")
        d = tm.card_dict("tiny-ext", "external", settings={"command": "{python} " + str(s) + " {input} {output}"}, **kw)
    else:
        raise AssertionError(kind)
    return load_card(tm.write_card(tmp, d))


GEOMETRIES = {
    # name: (shape kji, spacing ijk, direction)
    "axial": ((40, 48, 44), (0.8, 0.8, 1.25), np.eye(3)),
    "oblique": ((36, 40, 38), (0.9, 0.9, 1.0), rotation("x", 20) @ rotation("z", 15)),
    "uneven": ((9, 31, 53), (0.7, 1.1, 3.0), np.diag([1.0, -1.0, -1.0])),
}


@pytest.mark.parametrize("kind", ["native", "torchscript", "bundle-zip", "bundle-dir", "external"])
def test_each_runner_kind_segments_the_blob_on_the_source_grid(kind, isolated_env):
    card = _card(isolated_env, kind)
    shape, spacing, direction = GEOMETRIES["oblique"]
    vol, truth = blob_volume(shape, spacing, direction, centred_origin(shape, spacing, direction),
                             centers_lps=[(3.0, -2.0, 1.0)], radius_mm=7.0)
    stages = []
    res = run_model(card, vol, device="cpu", progress=lambda s, f, m: stages.append(s))
    lab = res.labels
    assert lab.array.shape == vol.array.shape and lab.array.dtype == np.uint8
    assert np.array_equal(lab.affine, vol.affine)
    assert dice(lab.array == 1, truth) > 0.9
    assert "infer" in stages and res.timings_s["total"] > 0
    s = res.summary()
    assert s["labels"][0]["components"] == 1 and s["device"].startswith("cpu")


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_label_map_lands_on_the_exact_source_grid(geometry, isolated_env):
    """Resampled to 1 mm RAS for the network and back: same shape, same affine, same anatomy."""
    card = _card(isolated_env, "native")
    shape, spacing, direction = GEOMETRIES[geometry]
    origin = centred_origin(shape, spacing, direction)
    vol, truth = blob_volume(shape, spacing, direction, origin, centers_lps=[(-5.0, 4.0, 0.0), (8.0, -6.0, 2.0)],
                             radius_mm=5.5)
    res = run_model(card, vol, device="cpu")
    assert res.labels.array.shape == vol.array.shape
    assert np.array_equal(res.labels.affine, vol.affine)
    assert dice(res.labels.array == 1, truth) > (0.85 if geometry == "uneven" else 0.9)
    prob = res.prediction.probabilities
    assert prob is not None and prob.array.shape == vol.array.shape
    # probabilities agree with the labels they produced
    assert np.all(prob.array[res.labels.array == 1] > 0.5)


def test_identity_grid_is_reproduced_voxel_for_voxel(isolated_env):
    """An LPS axial series at the card's own spacing goes through no interpolation at all."""
    card = _card(isolated_env, "native", orientation="LPS", target_spacing=None)
    vol, truth = blob_volume((20, 30, 25), (1.0, 1.0, 2.0), np.eye(3), (0, 0, 0), centers_lps=[(12.0, 15.0, 20.0)], radius_mm=6)
    res = run_model(card, vol, device="cpu")
    assert np.array_equal(res.labels.array == 1, truth)


def test_sliding_window_settings_and_cancellation(isolated_env):
    card = _card(isolated_env, "native")
    shape, spacing, direction = GEOMETRIES["axial"]
    vol, truth = blob_volume(shape, spacing, direction, centred_origin(shape, spacing, direction))
    res = run_model(card, vol, device="cpu", options=RunOptions(roi_size=(16, 16, 16), overlap=0.5, sw_batch_size=3))
    assert res.info["roi_size_ijk"] == [16, 16, 16] and res.info["sw_batch_size"] == 3
    assert dice(res.labels.array == 1, truth) > 0.9

    cancel = threading.Event()
    seen = []

    def progress(stage, fraction, message):
        seen.append(stage)
        if stage == "infer":
            cancel.set()  # the user presses Cancel while windows are running

    with pytest.raises(CancelledError):
        run_model(card, vol, device="cpu", options=RunOptions(roi_size=(16, 16, 16)), progress=progress, cancel=cancel)
    assert seen.count("infer") == 1  # stopped at the next window batch


def test_external_command_cancel_kills_its_process_tree(isolated_env):
    from .test_worker import wait_gone

    s = tm.make_external_script(isolated_env / "slow.py")
    pidfile = isolated_env / "grandchild.pid"
    d = tm.card_dict("tiny-slow", "external", settings={"command": "{python} " + f"{s} {{input}} {{output}} 60 {pidfile}"})
    card = load_card(tm.write_card(isolated_env, d))
    vol, _ = blob_volume((8, 16, 16), (1, 1, 1))
    cancel = threading.Event()
    t = threading.Timer(0.1, lambda: None)
    errors = []

    def go():
        try:
            run_model(card, vol, device="cpu", cancel=cancel)
        except CancelledError as exc:
            errors.append(exc)

    th = threading.Thread(target=go)
    th.start()
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text().endswith("\n"):
            break
        th.join(0.05)
    grandchild = int(pidfile.read_text())
    cancel.set()
    th.join(20)
    assert not th.is_alive() and errors
    assert wait_gone(grandchild)
    t.cancel()


def test_device_override_errors_are_clear():
    from MedImgAILib.inference.device import DeviceError, select_device

    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(DeviceError, match="cpu, cuda"):
        select_device("tpu9")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            select_device("cuda")


def test_single_window_mode_covers_the_whole_grid_once(isolated_env):
    """When the grid fits, one window (padded to the network's multiple) replaces the tiling."""
    card = _card(isolated_env, "native")
    shape, spacing, direction = GEOMETRIES["axial"]
    vol, truth = blob_volume(shape, spacing, direction, centred_origin(shape, spacing, direction))
    windows = []
    res = run_model(card, vol, device="cpu", options=RunOptions(single_window_max_voxels=10**7),
                    progress=lambda s, f, m: windows.append(m) if s == "infer" else None)
    grid = res.info["model_grid_shape_kji"]
    assert res.info["roi_size_ijk"] == [int(np.ceil(g / 16) * 16) for g in reversed(grid)]
    assert windows == ["window batch 1/1"]
    assert dice(res.labels.array == 1, truth) > 0.9


def test_modality_mismatch_is_refused(isolated_env):
    from MedImgAILib.errors import ModelError

    card = _card(isolated_env, "native")
    card.input.modality = "CT"
    vol, _ = blob_volume((8, 8, 8), (1, 1, 1))
    vol.modality = "MR"
    with pytest.raises(ModelError, match="expects CT"):
        run_model(card, vol, device="cpu")
