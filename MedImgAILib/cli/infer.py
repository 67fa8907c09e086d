"""``medimgai infer SERIES --model ID --out DIR``: label map NIfTI + inference.json (timings, device)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="run a model on a DICOM series folder or an image file")
    p.add_argument("series", help="DICOM series folder, or a NIfTI/NRRD/MHA file")
    p.add_argument("--model", required=True, help="model id (see `medimgai models list`) or a card .yaml")
    p.add_argument("--out", required=True, help="output directory (labels.nii.gz, inference.json)")
    p.add_argument("--series-uid", help="which series, when the folder holds several")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--weights-dir", help="offline directory holding the weights file")
    p.add_argument("--offline", action="store_true", help="never use the network")
    p.add_argument("--roi", type=int, nargs=3, metavar=("I", "J", "K"), help="sliding-window size (voxels)")
    p.add_argument("--overlap", type=float, help="sliding-window overlap (0-1)")
    p.add_argument("--batch", type=int, help="windows per batch")
    p.add_argument("--crop", choices=["none", "body", "lungs"], help="override the card's crop")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--probabilities", action="store_true", help="also write probabilities.nii.gz")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_infer)


def _infer(args: argparse.Namespace) -> int:
    from ..inference import RunOptions, load_input, run_model

    def progress(stage: str, fraction: float, message: str) -> None:
        if not args.quiet:
            print(f"\r{stage:<11} {fraction * 100:5.1f}%  {message[:60]:<60}", end="", file=sys.stderr, flush=True)

    volume = load_input(args.series, args.series_uid)
    opts = RunOptions(roi_size=tuple(args.roi) if args.roi else None, overlap=args.overlap, sw_batch_size=args.batch,
                      crop=args.crop, num_threads=args.threads, return_probabilities=args.probabilities)
    result = run_model(args.model, volume, device=args.device, weights_dir=args.weights_dir,
                       offline=True if args.offline else None, options=opts, progress=progress)
    if not args.quiet:
        print(file=sys.stderr)
    paths = result.write(args.out, probabilities=args.probabilities)
    s = result.summary()
    print(json.dumps({"outputs": {k: str(v) for k, v in paths.items()}, "device": s["device"],
                      "timings_s": s["timings_s"], "labels": s["labels"]}, indent=2))
    return 0
