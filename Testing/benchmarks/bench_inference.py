"""CPU inference of ct-lung-nodule on a 512x512x300 chest phantom: the engine vs plain MONAI.

    python -m Testing.benchmarks.bench_inference [--repeats 3] [--slices 300] [--device cpu]

Reference ("plain"): what one writes with MONAI by hand, with the same network and weights: resample
the whole series to the card's 1.5 mm grid, window, ``sliding_window_inference`` with its default
settings (roi 96^3 from the card, overlap 0.25, sw_batch_size 1, constant blending) over the whole
volume in float32 under ``torch.no_grad``, softmax, resample the nodule probability back onto the
whole source grid, threshold, then the card's postprocessing over the whole series (components under
the minimum volume, under the mean-probability floor, or tubular, removed): the same function the
engine uses, so both paths reach findings by the same rules.

Ours ("engine"): ``run_model`` as the CLI runs it: MONAI's windows laid on the whole model grid, but
only those touching the lung box run (the input is resampled only where they read), batches of 4
windows, channels-last, inference mode, the probability resampled back and postprocessed only in the
sub-box holding any nodule probability. "engine-single" is the previous optimized path (one window
over a lung-cropped grid, Gaussian blending); "engine-bf16" adds bfloat16 autocast on the CPU.

Each variant runs in its own process (peak RSS from ``resource.getrusage``), alternating, ``--repeats``
times; imports happen before the clock starts in every variant. Medians and ratios are printed; the
findings (26-connected components of the final label maps) of every variant are matched one to one
with the reference's: a table per variant (centre distance, volumes), and a verdict: same count,
centres within 2 voxels, volumes within 3 %. Dice of the final label maps too.
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
VARIANTS = ("plain", "engine", "engine-single", "engine-bf16")
DEFAULT_VARIANTS = ("plain", "engine", "engine-single")


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
    # the card's whole postprocessing, as the engine applies it (size, mean probability, elongation)
    return remove_small_components(labels, card, volume.voxel_volume_mm3, back, volume.affine[:3, :3])


def child(variant: str, data: Path, out: Path, device: str, weights: str | None) -> None:
    import torch

    from MedImgAILib.inference import RunOptions, make_runner, run_model
    from MedImgAILib.models import get_card

    import importlib

    for mod in ("monai.inferers", "scipy.ndimage", "SimpleITK"):  # imports before the clock, in every variant
        importlib.import_module(mod)

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
        # engine-single: the previous optimized path, one window over the lung-cropped grid with the
        # Gaussian blending the card used to ask for
        single = variant == "engine-single"
        res = run_model(card, volume, device=device, runner=runner,
                        options=RunOptions(return_probabilities=False, cpu_bf16=variant == "engine-bf16",
                                           single_window_max_voxels=12_000_000 if single else None,
                                           blend_mode="gaussian" if single else None))
        labels, timings = res.labels.array, res.timings_s
        timings = dict(timings, windows_run=res.info.get("windows_run", 0), windows=res.info.get("windows", 0))
    seconds = time.perf_counter() - t0
    np.save(out, labels)
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mb": _rss_mb(), "rss_loaded_mb": rss_loaded,
                      "threads": torch.get_num_threads(), "timings": timings}))


def findings(labels: np.ndarray, affine: np.ndarray) -> list[dict]:
    """26-connected components: centre (LPS mm, and voxel indices i, j, k) and volume."""
    from scipy import ndimage

    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    c = np.array(ndimage.center_of_mass(np.ones_like(comp), comp, idx))
    vox = ndimage.sum_labels(np.ones_like(comp), comp, idx)
    lps = c[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
    vv = float(abs(np.linalg.det(affine[:3, :3])))
    return [{"centre_lps_mm": lps[i], "centre_ijk": c[i, ::-1], "volume_mm3": float(vox[i] * vv)} for i in range(n)]


def match_findings(ref: list[dict], other: list[dict], spacing: np.ndarray, max_voxels: float = 2.0,
                   max_volume_rel: float = 0.03) -> tuple[list[dict], bool]:
    """One-to-one matching (nearest centre first) of ``other``'s findings to ``ref``'s. Same findings:
    same count, every centre within ``max_voxels`` voxels (per axis, in source voxels) and every volume
    within ``max_volume_rel``."""
    pairs = sorted(((float(np.linalg.norm(a["centre_lps_mm"] - b["centre_lps_mm"])), i, j)
                    for i, a in enumerate(ref) for j, b in enumerate(other)))
    used_r: set[int] = set()
    used_o: set[int] = set()
    rows = []
    for d, i, j in pairs:
        if i in used_r or j in used_o or d > 20.0:
            continue
        used_r.add(i)
        used_o.add(j)
        a, b = ref[i], other[j]
        dv = float(np.max(np.abs(a["centre_ijk"] - b["centre_ijk"])))
        rel = (b["volume_mm3"] - a["volume_mm3"]) / a["volume_mm3"]
        rows.append({"ref": i, "other": j, "distance_mm": d, "distance_voxels": dv, "ref_volume_mm3": a["volume_mm3"],
                     "volume_mm3": b["volume_mm3"], "volume_rel": rel, "ok": dv <= max_voxels and abs(rel) <= max_volume_rel})
    rows += [{"ref": i, "other": None, "ok": False} for i in range(len(ref)) if i not in used_r]
    rows += [{"ref": None, "other": j, "ok": False} for j in range(len(other)) if j not in used_o]
    rows.sort(key=lambda r: (r["ref"] is None, r["ref"] if r["ref"] is not None else r["other"]))
    return rows, len(ref) == len(other) and all(r["ok"] for r in rows)


def truth_name(f: dict, truth: list[dict]) -> str:
    for t_i, n in enumerate(truth):
        if np.linalg.norm(f["centre_lps_mm"] - np.asarray(n["center_lps_mm"])) <= n["diameter_mm"] / 2 + 2:
            return f"nodule {t_i + 1} ({n['diameter_mm']:.1f} mm)"
    return "false positive"


def print_match_table(name: str, rows: list[dict], ref: list[dict], other: list[dict], truth: list[dict]) -> None:
    print(f"\nfindings: plain vs {name}")
    print(f"  {'#':>2} {'plain centre LPS mm':>24} {'plain mm3':>10} {name + ' mm3':>16} {'dV':>7} {'d mm':>6} {'d vox':>6} "
          f"{'match':>6}  phantom")
    for r in rows:
        a = ref[r["ref"]] if r["ref"] is not None else None
        b = other[r["other"]] if r["other"] is not None else None
        c = (a or b)["centre_lps_mm"]  # type: ignore[index]
        centre = f"({c[0]:6.1f},{c[1]:6.1f},{c[2]:6.1f})"
        if a is not None and b is not None:
            print(f"  {r['ref'] + 1:>2} {centre:>24} {a['volume_mm3']:10.1f} {b['volume_mm3']:16.1f} {r['volume_rel'] * 100:+6.1f}% "
                  f"{r['distance_mm']:6.2f} {r['distance_voxels']:6.2f} {'yes' if r['ok'] else 'NO':>6}  {truth_name(a, truth)}")
        elif a is not None:
            print(f"  {r['ref'] + 1:>2} {centre:>24} {a['volume_mm3']:10.1f} {'-':>16} {'':>7} {'':>6} {'':>6} {'NO':>6}  {truth_name(a, truth)}")
        else:
            print(f"  {'-':>2} {centre:>24} {'-':>10} {b['volume_mm3']:16.1f} {'':>7} {'':>6} {'':>6} {'NO':>6}  {truth_name(b, truth)}")  # type: ignore[index]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"from {','.join(VARIANTS)}")
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
    spacing = np.asarray(volume.spacing)
    verdicts: dict[str, bool] = {}
    for v in variants:
        if v == ref:
            continue
        f = findings(labels[v], volume.affine)
        rows, same = match_findings(ref_f, f, spacing)
        verdicts[v] = same
        print_match_table(v, rows, ref_f, f, truth)
    print(f"\n{'variant':<14} {'median s':>9} {'ratio':>7} {'peak RSS MB':>12} {'(+ over loaded)':>16} {'findings':>9} "
          f"{'same findings':>14} {'Dice vs ref':>12} {'phantom nodules found':>22}")
    for v in variants:
        med = statistics.median(x["seconds"] for x in runs[v])
        rss = max(x["peak_rss_mb"] for x in runs[v])
        loaded = max(x["rss_loaded_mb"] for x in runs[v])
        f = findings(labels[v], volume.affine)
        a, b = labels[v] > 0, labels[ref] > 0
        d = 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))
        found = sum(1 for n in truth if any(np.linalg.norm(x["centre_lps_mm"] - np.asarray(n["center_lps_mm"])) <= n["diameter_mm"] / 2 + 2
                                            for x in f))
        same = "(reference)" if v == ref else ("YES" if verdicts[v] else "NO")
        print(f"{v:<14} {med:9.2f} {t_ref / med:6.2f}x {rss:12.0f} {rss - loaded:16.0f} {len(f):9d} "
              f"{same:>14} {d:12.4f} {found:>20d}/{len(truth)}")
    eng = [x["timings"] for x in runs.get("engine", [])]
    if eng:
        keys = sorted(k for k in eng[0] if not k.startswith("windows"))
        print("engine stages (median s): " + ", ".join(f"{k} {statistics.median(e[k] for e in eng):.2f}" for k in keys)
              + f"; windows run {eng[0]['windows_run']} of {eng[0]['windows']}")
    if "engine" in verdicts:
        print(f"engine: {t_ref / statistics.median(x['seconds'] for x in runs['engine']):.2f}x faster than plain, "
              f"same findings: {'YES' if verdicts['engine'] else 'NO'} (same count, centres within 2 voxels, volumes within 3 %)")
    print(f"torch threads: {runs[ref][0]['threads']}, device: {args.device}, repeats: {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
