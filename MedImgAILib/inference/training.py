"""Reproducible training of the shipped ``ct-lung-nodule`` model on synthetic chest-CT phantoms.

``medimgai train ct-lung-nodule --out DIR --seed 0`` generates phantoms (seeds below 10000; the
evaluation uses seeds from 10000 on, so the test set is never seen in training), preprocesses them
exactly as inference does (lung crop, 1.5 mm LPS grid, HU window), and trains a small MONAI U-Net on
48^3 patches (72 mm; ``--patch``): half centred on nodules, the rest on hard negatives (vessels, airway walls and the chest
wall next to the lung) and on random lung. Everything random is drawn from generators seeded by
``--seed``; torch runs single-process with a fixed thread count, so the same command gives the same
weights on the same software stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..models.card import ModelCard
from ..models.registry import get_card
from . import geometry as geo
from .phantom_data import TRAIN_SEED_LIMIT, phantom_case, sample_acquisition
from .runners import preprocess

MODEL_ID = "ct-lung-nodule"


@dataclass
class TrainConfig:
    seed: int = 0
    cases: int = 12
    steps: int = 260
    batch: int = 4
    patch: int = 48
    lr: float = 2e-3
    weight_decay: float = 1e-4
    threads: int = 2
    #: fractions of patches centred on nodules / hard negatives; the rest is random lung
    p_nodule: float = 0.6
    p_hard_negative: float = 0.3
    #: phantom sets: for each data seed d, ``cases`` phantoms (seeds d*7919+n) with acquisitions drawn
    #: from a generator seeded by d (the recipe of a one-set run with ``seed=d``, so earlier runs'
    #: cached phantoms are reused); None = the single set of ``seed``
    data_seeds: Optional[list[int]] = None
    #: additive Gaussian noise augmentation: sd drawn uniformly in [0, this] window units (1 = 1400 HU)
    noise_aug: float = 0.0
    #: nodule patches: pick a nodule first, then one of its voxels (small nodules as often as large
    #: ones); False picks a nodule voxel uniformly (large nodules dominate), as 1.0.0 / 1.1.0 did
    per_nodule_sampling: bool = False
    #: how far a patch centre moves from the drawn voxel, as a fraction of the patch (uniform in
    #: +-jitter*patch per axis). 0.25 (1.0.0-1.2.0) keeps a nodule >= ~1/4 patch from the border;
    #: 0.5 puts the drawn voxel anywhere in the patch, up to its border, as sliding windows see it
    jitter: float = 0.25
    #: Dice per patch instead of over the batch: a patch with a 5 mm nodule then weighs as much as one
    #: with a 20 mm nodule (over the batch, a 5 mm nodule's ~20 voxels are lost beside ~1200)
    dice_per_patch: bool = False
    #: write a checkpoint every this many steps (0: none); the final weights are the run's result
    checkpoint_every: int = 0
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    #: continue from these weights (a state_dict from an earlier run), e.g. a second stage on new phantoms
    init: Optional[str] = None


@dataclass
class _Sample:
    image: np.ndarray  # float16 [k, j, i], windowed to [0, 1]
    target: np.ndarray  # uint8 [k, j, i]
    nodule_voxels: np.ndarray  # (n, 3) indices
    nodule_ids: np.ndarray  # (n,) the connected nodule each of nodule_voxels belongs to (0-based)
    negative_voxels: np.ndarray  # (m, 3) indices
    lung_voxels: np.ndarray  # (l, 3) indices


def _prepare(case, card: ModelCard, rng: np.random.Generator) -> _Sample:
    from scipy import ndimage

    arr, grid, box = preprocess(case.volume, card, "lungs")
    mask_vol = case.volume.with_array(case.nodule_mask.astype(np.float32))
    src = mask_vol if box is None else geo.crop_volume(mask_vol, box)
    target = geo.resample(np.asarray(src.array, np.float32), geo.Grid.of(src), grid, interpolation="linear") > 0.5
    it = card.input.intensity
    hu = lambda v: (v - it.lower) / (it.upper - it.lower)  # noqa: E731  HU -> window units
    air = arr < hu(-600.0)
    near_air = ndimage.binary_dilation(air, iterations=3)
    dense = arr > hu(-350.0)
    not_nodule = ~ndimage.binary_dilation(target, iterations=3)
    negatives = np.argwhere(dense & near_air & not_nodule)
    lung = np.argwhere(air & ndimage.binary_erosion(near_air, iterations=1))

    def _sub(a: np.ndarray, n: int) -> np.ndarray:
        return a if len(a) <= n else a[rng.choice(len(a), n, replace=False)]

    comp, _ = ndimage.label(target, structure=np.ones((3, 3, 3)))
    nod = np.argwhere(target)
    return _Sample(arr.astype(np.float16), target.astype(np.uint8), nod, comp[tuple(nod.T)] - 1,
                   _sub(negatives, 20000), _sub(lung, 20000))


def _patch(sample: _Sample, centre: np.ndarray, size: int, rng: np.random.Generator,
           noise_aug: float = 0.0, jitter: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A size^3 patch around ``centre`` moved by up to ``jitter * size`` per axis, padded with air (0)
    outside the volume."""
    h = int(jitter * size)  # 0.25: size // 4, the 1.0.0-1.2.0 recipe (same draws, same weights)
    c = centre + rng.integers(-h, h + 1, size=3)
    lo = c - size // 2
    img = np.zeros((size, size, size), np.float32)
    tgt = np.zeros((size, size, size), np.uint8)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(lo + size, sample.image.shape)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - lo
        dst_hi = dst_lo + (src_hi - src_lo)
        s = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        d = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))
        img[d] = sample.image[s]
        tgt[d] = sample.target[s]
    # augmentation: flips in-plane and along z (anatomy is close to symmetric at patch scale),
    # a small window shift and scale (scanner calibration), nothing that would change a size
    for ax in range(3):
        if rng.random() < 0.5:
            img, tgt = np.flip(img, ax), np.flip(tgt, ax)
    img = img * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)
    if noise_aug > 0:  # scanner noise between low-dose and routine, on top of the phantom's own
        img = img + rng.normal(0.0, rng.uniform(0.0, noise_aug), size=img.shape).astype(np.float32)
    return np.ascontiguousarray(img), np.ascontiguousarray(tgt)


def train_lung_nodule(cfg: TrainConfig, out_dir: str | os.PathLike[str], *,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    from monai.losses import DiceCELoss

    from .nets import lung_nodule_unet

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = get_card(MODEL_ID)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)

    # --- data: phantoms preprocessed exactly as at inference ---------------------------------------
    samples: list[_Sample] = []
    acquisitions: list[dict[str, Any]] = []
    data_seeds = cfg.data_seeds if cfg.data_seeds is not None else [cfg.seed]
    for ds in data_seeds:
        # one-set runs draw data from the main generator (as the 1.0.0 recipe did); several sets each
        # from their own, so that set d is the same phantoms whatever else is trained with it
        drng = rng if cfg.data_seeds is None else np.random.default_rng(ds)
        for n in range(cfg.cases):
            seed = (ds * 7919 + n) % TRAIN_SEED_LIMIT
            acq = sample_acquisition(drng)
            case = phantom_case(seed, **acq)
            samples.append(_prepare(case, card, drng))
            acquisitions.append({"seed": seed, **acq})
            log(f"phantom {len(samples)}/{cfg.cases * len(data_seeds)} seed {seed} {acq} grid {samples[-1].image.shape} "
                f"nodule voxels {len(samples[-1].nodule_voxels)}")
    t_data = time.perf_counter() - t_start

    # --- model and optimisation --------------------------------------------------------------------
    kwargs = dict(card.runner.settings.get("kwargs") or {})
    kwargs.update(cfg.network_kwargs)
    net = lung_nodule_unet(**kwargs)
    if cfg.init:
        net.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True))
        log(f"continuing from {cfg.init} (sha256 {hashlib.sha256(Path(cfg.init).read_bytes()).hexdigest()})")
    # Dice on the nodule channel only (with the background channel in, an all-background net already
    # scores ~0.5 and training can settle there), plus cross-entropy weighted towards nodules
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=not cfg.dice_per_patch,
                         weight=torch.tensor([1.0, 3.0]))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 5 %
        opt, lambda s: (s + 1) / warm if s < warm else 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, cfg.steps - warm))))
    with_nodules = [i for i, s in enumerate(samples) if len(s.nodule_voxels)]
    losses: list[float] = []
    net.train()
    for step in range(cfg.steps):
        imgs, tgts = [], []
        for _ in range(cfg.batch):
            u = rng.random()
            if u < cfg.p_nodule and with_nodules:
                s = samples[with_nodules[rng.integers(len(with_nodules))]]
                if cfg.per_nodule_sampling:
                    pick = rng.integers(int(s.nodule_ids.max()) + 1)
                    members = np.flatnonzero(s.nodule_ids == pick)
                    centre = s.nodule_voxels[members[rng.integers(len(members))]]
                else:
                    centre = s.nodule_voxels[rng.integers(len(s.nodule_voxels))]
            else:
                s = samples[rng.integers(len(samples))]
                pool = s.negative_voxels if (u < cfg.p_nodule + cfg.p_hard_negative and len(s.negative_voxels)) else s.lung_voxels
                centre = pool[rng.integers(len(pool))] if len(pool) else np.asarray(s.image.shape) // 2
            img, tgt = _patch(s, np.asarray(centre), cfg.patch, rng, cfg.noise_aug, cfg.jitter)
            imgs.append(img)
            tgts.append(tgt)
        x = torch.from_numpy(np.stack(imgs))[:, None]
        y = torch.from_numpy(np.stack(tgts))[:, None].long()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            torch.save({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()},
                       out / f"checkpoint-{step + 1}.pt")
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-25:]):.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"({time.perf_counter() - t_start:.0f} s)")

    # --- save ----------------------------------------------------------------------------------------
    net.eval()
    weights = out / "ct-lung-nodule.pt"
    tmp = out / ".ct-lung-nodule.pt.partial"
    # plain tensors, no pickled code: loadable with torch.load(weights_only=True)
    torch.save({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    result = {
        "weights": str(weights),
        "sha256": sha,
        "size_bytes": weights.stat().st_size,
        "config": asdict(cfg),
        "network_kwargs": kwargs,
        "acquisitions": acquisitions,
        "final_loss": float(np.mean(losses[-50:])),
        "data_s": round(t_data, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps({**result, "losses": losses}, indent=2))
    return result
