"""``medimgai train ct-lung-nodule --out DIR --seed 0``: the reproducible training of the shipped model."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a shipped model from synthetic phantoms (reproducible)")
    p.add_argument("model_id", choices=["ct-lung-nodule"])
    p.add_argument("--out", required=True, help="directory for the weights and training log")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=None, help="training phantoms (default: the recipe's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init", help="continue from this state_dict (a second training stage)")
    p.add_argument("--data-seeds", help="comma-separated phantom sets (each --cases phantoms), e.g. 0,1,2")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--p-nodule", type=float, default=None, help="fraction of patches centred on nodules")
    p.add_argument("--p-hard-negative", type=float, default=None,
                   help="fraction centred on vessels, airway walls and chest wall (the rest: random lung)")
    p.add_argument("--noise-aug", type=float, default=None, help="max sd of added noise (window units)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--patch", type=int, default=None, help="patch edge in voxels (default 48; a multiple of 8)")
    p.add_argument("--jitter", type=float, default=None,
                   help="patch centre offset from the drawn voxel, fraction of the patch (default 0.25; 0.5: "
                        "the voxel anywhere in the patch, up to its border, as sliding windows place nodules)")
    p.add_argument("--dice-per-patch", action="store_true",
                   help="Dice per patch, not over the batch (small nodules weigh as much as large ones)")
    p.add_argument("--per-nodule-sampling", action="store_true",
                   help="centre nodule patches on a nodule drawn uniformly, so small nodules are seen as often as large ones")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..inference.training import TrainConfig, train_lung_nodule

    cfg = TrainConfig(seed=args.seed)
    if args.cases is not None:
        cfg.cases = args.cases
    if args.steps is not None:
        cfg.steps = args.steps
    if args.init:
        cfg.init = args.init
    if args.threads is not None:
        cfg.threads = args.threads
    if args.data_seeds:
        cfg.data_seeds = [int(x) for x in args.data_seeds.split(",") if x.strip()]
    if args.per_nodule_sampling:
        cfg.per_nodule_sampling = True
    if args.dice_per_patch:
        cfg.dice_per_patch = True
    if args.patch is not None and (args.patch < 16 or args.patch % 8):
        print(f"medimgai train: --patch {args.patch}: use a multiple of 8 of at least 16 (the U-Net halves it 3 times)",
              file=sys.stderr)
        return 2
    if args.jitter is not None and not 0.0 <= args.jitter <= 0.5:
        print(f"medimgai train: --jitter {args.jitter}: use 0-0.5 (a fraction of the patch)", file=sys.stderr)
        return 2
    for name in ("batch", "lr", "p_nodule", "p_hard_negative", "noise_aug", "checkpoint_every", "patch", "jitter"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    result = train_lung_nodule(cfg, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2))
    return 0
