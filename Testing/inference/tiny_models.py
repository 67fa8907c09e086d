"""Tiny real models for the runner tests: a 1x1x1 convolution whose foreground logit is
``gain * (x - 0.5)``, so on an image of 0 background and 1 foreground its label map is the foreground.
Built here as a state_dict, a TorchScript file, a MONAI bundle (zipped and plain) and an external
command, so every runner kind runs a real network end to end."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

GAIN = 40.0


class ThresholdNet(torch.nn.Module):
    """Background/foreground logits from one channel: a real nn.Module with real weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def threshold_state(prefix: str = "conv.") -> dict[str, torch.Tensor]:
    return {
        prefix + "weight": torch.tensor([0.0, GAIN]).reshape(2, 1, 1, 1, 1),
        prefix + "bias": torch.tensor([0.0, -GAIN / 2]),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card_dict(model_id: str, kind: str, *, settings: dict[str, Any] | None = None, weights: Path | None = None,
              url: str | None = None, target_spacing=(1.0, 1.0, 1.0), orientation: str = "RAS",
              roi=(32, 32, 32)) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema": "medimgai.model-card/1",
        "id": model_id,
        "version": "0.0.1",
        "name": f"test {kind} model",
        "task": "segmentation",
        "modality": "CT",
        "body_region": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"},
        "source": "Testing/inference/tiny_models.py",
        "effective": "2026-11-29",
        "intended_use": "tests only",
        "limitations": ["a threshold, not a model of anything"],
        "input": {"orientation": orientation, "target_spacing_mm": list(target_spacing) if target_spacing else None,
                  "intensity": {"mode": "none"}, "channels": 1},
        "labels": [{"name": "blob", "value": 1,
                    "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"},
                    "type": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}, "color_rgb": [255, 0, 0]}],
        "runner": {"kind": kind, "settings": settings or {},
                   "sliding_window": {"roi_size": list(roi), "overlap": 0.25, "sw_batch_size": 2}},
        "postprocessing": {"activation": "softmax", "remove_small_components": False},
    }
    if weights is not None:
        d["weights"] = {"url": url or weights.resolve().as_uri(), "sha256": sha256(weights),
                        "size_bytes": weights.stat().st_size, "licence": "CC0-1.0", "filename": weights.name}
    return d


def write_card(dir_: Path, d: dict[str, Any]) -> Path:
    p = dir_ / f"{d['id']}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def make_state_dict(path: Path) -> Path:
    torch.save(threshold_state(), path)
    return path


def make_torchscript(path: Path) -> Path:
    net = ThresholdNet()
    net.load_state_dict(threshold_state())
    torch.jit.script(net.eval()).save(str(path))
    return path


def make_bundle(root: Path, name: str = "tiny_bundle") -> Path:
    """A MONAI bundle whose network_def is a plain torch Conv3d, instantiated by MONAI's parser."""
    b = root / name
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    (b / "configs" / "metadata.json").write_text(json.dumps({
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.0.1", "monai_version": "1.6.1", "pytorch_version": torch.__version__,
        "numpy_version": np.__version__, "name": name, "task": "threshold", "description": "test bundle",
        "authors": "MedImgAI tests", "copyright": "CC0",
        "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
                                "outputs": {"pred": {"type": "image", "num_channels": 2, "spatial_shape": [32, 32, 32]}}},
    }))
    (b / "configs" / "inference.json").write_text(json.dumps({
        "bundle_root": ".",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
    }))
    torch.save(threshold_state(prefix=""), b / "models" / "model.pt")
    return b


def zip_dir(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src.parent))
    return dest


EXTERNAL_SCRIPT = textwrap.dedent('''
    """Stand-in for an nnU-Net style command: NIfTI in, NIfTI label map out (threshold at 0.5)."""
    import subprocess, sys, time
    import nibabel as nib
    import numpy as np
    inp, out = sys.argv[1], sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    if delay:
        # a grandchild too, as real tools start helpers; cancelling must kill it as well
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open(sys.argv[4], "w").write(f"{child.pid}\\n")
        time.sleep(delay)
    img = nib.load(inp)
    lab = (np.asanyarray(img.dataobj) > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab, img.affine), out)
''')


def make_external_script(path: Path) -> Path:
    path.write_text(EXTERNAL_SCRIPT)
    return path
