"""CPU inference of ct-lung-nodule on a 512x512x300 chest phantom: the engine vs plain MONAI.

    python -m Testing.benchmarks.bench_inference [--repeats 3] [--slices 300] [--device cpu]

Reference ("plain"): what one writes with MONAI by hand, with the same network and weights: resample
the whole series to the card's 1.5 mm grid, window, ``sliding_window_inference`` with its default
settings (roi 96^3 from the card, overlap 0.25, sw_batch_size 1, constant blending) over the whole
volume in float32, softmax, resample the nodule probability back onto the whole source grid,
threshold, drop components under the card's minimum volume.

Ours ("engine"): ``run_model`` as the CLI runs it: lung crop, one window over the cropped grid when it
fits (no overlap recomputation), channels-last, inference mode, only the region with any nodule
probability resampled back. "engine-bf16" adds bfloat16 autocast on the CPU.

Each variant runs in its own process (peak RSS from ``resource.getrusage``), alternating, ``--repeats``
times; medians and ratios are printed, and the findings (26-connected components) of every variant are
compared with the reference's: same count, centroids within 2 mm, Dice of the label maps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("plain", "engine", "engine-bf16", "engine-tiled")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_phantom(path: Path, slices: int, seed: int = 20_000) -> None:
    from MedImgAILib.inference.phantom_data import phantom_case

    case = phantom_case(seed, slice_thickness_mm=1.0, kernel="sharp", noise="high", matrix=512, fov_mm=380.0,
                        nodules=5, slices=slices)
    np.savez(path, array=case.volume.array.astype(np.int16), affine=case.volume.affine,
             labels=case.nodule_label_map, nodules=json.dumps(case.nodules))


def _load(path: Path):
    from MedImgAILib.volume import Volume

    d = np.load(path)
    vol = Volume(array=d["array"].astype(np.float32), affine=d["affine"], modality="CT")
    return vol, d["labels"], json.loads(str(d["nodules"]))


def run_plain(volume, card, net, device: str) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference

    from MedImgAILib.inference import geometry as geo
    from MedImgAILib.inference.runners import preprocess, remove_small_components

    arr, grid, _ = preprocess(volume, card, "none")
    x = torch.from_numpy(arr)[None, None].to(device)
    roi = tuple(reversed(card.runner.sliding_window.roi_size))
    with torch.no_grad():
        logits = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, predictor=net.to(device))
    prob = torch.softmax(logits, dim=1)[0, 1].cpu().numpy()
    back = geo.resample(prob, grid, geo.Grid.of(volume), interpolation="linear")
    labels = (back > card.postprocessing_spec.threshold).astype(np.uint8)
    return remove_small_components(labels, card, volume.voxel_volume_mm3)


def child(variant: str, data: Path, out: Path, device: str, weights: str | None) -> None:
    import torch

    from MedImgAILib.inference import RunOptions, make_runner, run_model
    from MedImgAILib.models import get_card

    volume, _, _ = _load(data)
    card = get_card("ct-lung-nodule")
    if weights:
        from MedImgAILib.inference.runners import RUNNERS

        runner = RUNNERS[card.runner.kind](card, Path(weights))
    else:
        runner = make_runner(card)
    rss_loaded = _rss_mb()
    t0 = time.perf_counter()
    if variant == "plain":
        labels = run_plain(volume, card, runner.load_network().eval(), device)
        timings = {}
    else:
        # engine-tiled: the lung crop and the rest of the engine, but plain's tiling and blending, to
        # separate what the crop changes from what the single window changes
        tiled = variant == "engine-tiled"
        res = run_model(card, volume, device=device, runner=runner,
                        options=RunOptions(return_probabilities=False, cpu_bf16=variant == "engine-bf16",
                                           single_window_max_voxels=0 if tiled else None,
                                           blend_mode="constant" if tiled else None, sw_batch_size=1 if tiled else None))
        labels, timings = res.labels.array, res.timings_s
    seconds = time.perf_counter() - t0
    np.save(out, labels)
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mb": _rss_mb(), "rss_loaded_mb": rss_loaded,
                      "threads": torch.get_num_threads(), "timings": timings}))


def findings(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros((0, 3))
    c = np.array(ndimage.center_of_mass(np.ones_like(comp), comp, np.arange(1, n + 1)))
    return c[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]


def same_findings(a: np.ndarray, b: np.ndarray, tol_mm: float = 2.0) -> bool:
    if len(a) != len(b):
        return False
    return all(np.min(np.linalg.norm(b - p, axis=1)) <= tol_mm for p in a) if len(a) else True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--weights", help="state_dict to use instead of the card's weights")
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--data")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.data), Path(args.out), args.device, args.weights)
        return 0

    from MedImgAILib.models.weights import cache_dir

    from MedImgAILib.inference.phantom_data import _generator_fingerprint

    data = cache_dir() / "bench" / f"phantom-512x512x{args.slices}-seed20000-{_generator_fingerprint()}.npz"
    if not data.is_file():
        data.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tmp = data.with_name(".tmp-" + data.name)
        make_phantom(tmp, args.slices)
        os.replace(tmp, data)
        print(f"phantom generated in {time.perf_counter() - t0:.0f} s -> {data}", file=sys.stderr)
    volume, truth_labels, truth = _load(data)
    print(f"series: {volume.shape_ijk} voxels, spacing {tuple(round(s, 3) for s in volume.spacing)} mm, "
          f"{len(truth)} phantom nodules ({', '.join('%.1f' % n['diameter_mm'] for n in truth)} mm)")
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    labels: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for v in variants:  # alternating, so drift in machine load hits every variant alike
                out = Path(tmp) / f"{v}.npy"
                p = subprocess.run([sys.executable, "-m", "Testing.benchmarks.bench_inference", "--child", v,
                                    "--data", str(data), "--out", str(out), "--device", args.device]
                                   + (["--weights", args.weights] if args.weights else []),
                                   cwd=REPO, capture_output=True, text=True)
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    return 1
                rec = json.loads(p.stdout.strip().splitlines()[-1])
                runs[v].append(rec)
                labels[v] = np.load(out)
                print(f"run {r + 1}/{args.repeats} {v:<12} {rec['seconds']:7.2f} s  peak RSS {rec['peak_rss_mb']:7.0f} MB",
                      file=sys.stderr, flush=True)

    ref = "plain" if "plain" in variants else variants[0]
    ref_f = findings(labels[ref], volume.affine)
    t_ref = statistics.median(x["seconds"] for x in runs[ref])
    truth_c = np.array([n["center_lps_mm"] for n in truth])
    print(f"\n{'variant':<12} {'median s':>9} {'ratio':>7} {'peak RSS MB':>12} {'(+ over loaded)':>16} {'findings':>9} "
          f"{'same as ref':>12} {'Dice vs ref':>12} {'phantom nodules found':>22}")
    for v in variants:
        med = statistics.median(x["seconds"] for x in runs[v])
        rss = max(x["peak_rss_mb"] for x in runs[v])
        loaded = max(x["rss_loaded_mb"] for x in runs[v])
        f = findings(labels[v], volume.affine)
        a, b = labels[v] > 0, labels[ref] > 0
        d = 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))
        found = sum(1 for c, n in zip(truth_c, truth) if len(f) and np.min(np.linalg.norm(f - c, axis=1)) <= n["diameter_mm"] / 2 + 2)
        print(f"{v:<12} {med:9.2f} {t_ref / med:6.2f}x {rss:12.0f} {rss - loaded:16.0f} {len(f):9d} "
              f"{str(same_findings(f, ref_f)):>12} {d:12.4f} {found:>17d}/{len(truth)}")
    eng = [x["timings"] for x in runs.get("engine", [])]
    if eng:
        keys = sorted(eng[0])
        print("engine stages (median s): " + ", ".join(f"{k} {statistics.median(e[k] for e in eng):.2f}" for k in keys))
    print(f"torch threads: {runs[ref][0]['threads']}, device: {args.device}, repeats: {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
