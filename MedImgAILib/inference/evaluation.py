"""Detection scoring of a nodule model on a fresh phantom test set (``medimgai models evaluate``).

Test phantoms use seeds from 10000 on (training uses seeds below), and cycle through the combinations
of slice thickness (0.625, 1.25, 2.5, 5 mm), kernel (soft, sharp) and noise (low, high: 300 / 40 mA),
so with a multiple of 8 cases each thickness x kernel stratum is covered equally (16 covers all three).

Scoring: predicted nodules are the 26-connected components of the label map. A reference nodule is
detected when a component overlaps it or has its centroid within (radius + 2 mm) of its centre; a
component that matches no reference nodule is a false positive. Volume error compares the matched
components' volume with the phantom's analytic nodule volume.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from scipy import ndimage

from ..models.registry import get_card
from .engine import run_model
from .phantom_data import TEST_SEED_START, phantom_case

THICKNESSES_MM = (0.625, 1.25, 2.5, 5.0)
KERNELS = ("soft", "sharp")
NOISES = ("low", "high")


def test_acquisition(i: int) -> dict[str, Any]:
    """Case i's acquisition: 8 consecutive cases hold every thickness x kernel once with the noise
    levels balanced; the next 8 flip the noise, so 16 cases hold every combination once."""
    t = THICKNESSES_MM[i % 4]
    k = KERNELS[(i // 4) % 2]
    n = NOISES[(i + i // 4 + i // 8) % 2]
    # thin-slice cases at a 192 matrix (1.8 mm pixels at 340 mm FOV) keep the phantom rendering time of
    # a test set in minutes on 2 cores; thick-slice cases at 256 (1.3 mm). The network sees 1.5 mm.
    return {"slice_thickness_mm": t, "kernel": k, "noise": n, "matrix": 192 if t <= 1.25 else 256, "fov_mm": 340.0}


def score_case(labels: np.ndarray, affine: np.ndarray, truth_nodules: list[dict[str, Any]],
               truth_label_map: np.ndarray) -> dict[str, Any]:
    """Match predicted components against reference nodules on the series grid."""
    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    vox_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(comp), comp, idx) if n else np.zeros(0)
    cents = np.array(ndimage.center_of_mass(np.ones_like(comp), comp, idx)) if n else np.zeros((0, 3))
    cents_lps = cents[:, ::-1] @ affine[:3, :3].T + affine[:3, 3] if n else np.zeros((0, 3))
    matched_comp: set[int] = set()
    per_nodule = []
    for t_i, nod in enumerate(truth_nodules, start=1):
        overlap = set(np.unique(comp[(truth_label_map == t_i) & (comp > 0)]).tolist())
        centre = np.asarray(nod["center_lps_mm"])
        near = {int(c) for c, p in zip(idx, cents_lps) if np.linalg.norm(p - centre) <= nod["diameter_mm"] / 2 + 2.0}
        hits = overlap | near
        matched_comp |= hits
        pred_vol = float(sum(sizes[c - 1] for c in hits) * vox_mm3)
        per_nodule.append({
            "diameter_mm": nod["diameter_mm"], "volume_mm3": nod["volume_mm3"], "detected": bool(hits),
            "predicted_volume_mm3": pred_vol if hits else None,
            "volume_error": (pred_vol - nod["volume_mm3"]) / nod["volume_mm3"] if hits else None,
        })
    fps = [int(c) for c in idx if int(c) not in matched_comp]
    return {"nodules": per_nodule, "false_positives": len(fps),
            "false_positive_volumes_mm3": [float(sizes[c - 1] * vox_mm3) for c in fps]}


def evaluate_model(model_id: str, *, cases: int = 16, first_seed: int = TEST_SEED_START, device: str = "cpu",
                   weights: Optional[str] = None, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    card = get_card(model_id)
    runner = None
    if weights:
        from .runners import RUNNERS

        runner = RUNNERS[card.runner.kind](card, Path(weights))
    results = []
    t0 = time.perf_counter()
    for i in range(cases):
        acq = test_acquisition(i)
        seed = first_seed + i
        case = phantom_case(seed, **acq)
        res = run_model(card, case.volume, device=device, runner=runner)
        sc = score_case(res.labels.array, case.volume.affine, case.nodules, case.nodule_label_map)
        sc.update(seed=seed, **acq, noise_sd_hu=case.acquisition["noise_sd_hu"], shape_ijk=list(case.volume.shape_ijk), seconds=res.timings_s["total"])
        results.append(sc)
        det = sum(n["detected"] for n in sc["nodules"])
        progress(f"case {i + 1}/{cases} seed {seed} {acq}: {det}/{len(sc['nodules'])} nodules, "
                 f"{sc['false_positives']} FP, {res.timings_s['total']:.1f} s")
    return summarize(results, model=f"{card.id} {card.version}", seconds=time.perf_counter() - t0)


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    nods = [n for r in rows for n in r["nodules"]]
    det = [n for n in nods if n["detected"]]
    big = [n for n in nods if n["diameter_mm"] >= 6.0]
    errs = [abs(n["volume_error"]) for n in det if n["volume_error"] is not None]
    signed = [n["volume_error"] for n in det if n["volume_error"] is not None]
    return {
        "cases": len(rows),
        "nodules": len(nods),
        "sensitivity": len(det) / len(nods) if nods else float("nan"),
        "sensitivity_ge_6mm": sum(n["detected"] for n in big) / len(big) if big else float("nan"),
        "fp_per_scan": sum(r["false_positives"] for r in rows) / len(rows) if rows else float("nan"),
        "volume_abs_error_median": float(np.median(errs)) if errs else float("nan"),
        "volume_error_mean": float(np.mean(signed)) if signed else float("nan"),
    }


def summarize(results: list[dict[str, Any]], *, model: str, seconds: float) -> dict[str, Any]:
    strata: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        strata[f"thickness {r['slice_thickness_mm']} mm"].append(r)
        strata[f"kernel {r['kernel']}"].append(r)
        strata[f"noise {r['noise']}"].append(r)
    return {"model": model, "overall": _stats(results), "strata": {k: _stats(v) for k, v in sorted(strata.items())},
            "cases": results, "seconds": round(seconds, 1)}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"model {report['model']}: fresh phantom test set, {report['overall']['cases']} cases "
             f"({report['seconds']:.0f} s)",
             f"{'stratum':<22} {'cases':>5} {'nodules':>7} {'sens':>6} {'sens>=6mm':>9} {'FP/scan':>7} "
             f"{'|dV| med':>8} {'dV mean':>8}"]

    def row(name: str, s: dict[str, Any]) -> str:
        return (f"{name:<22} {s['cases']:>5} {s['nodules']:>7} {s['sensitivity']:>6.2f} {s['sensitivity_ge_6mm']:>9.2f} "
                f"{s['fp_per_scan']:>7.2f} {s['volume_abs_error_median'] * 100:>7.1f}% {s['volume_error_mean'] * 100:>+7.1f}%")

    lines.append(row("overall", report["overall"]))
    for k, s in report["strata"].items():
        lines.append(row(k, s))
    return "\n".join(lines)
