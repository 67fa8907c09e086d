"""``medimgai hippodeep T1_PATH [--out DIR] [--json]``: hippocampal and intracranial volumes of a T1 MR
(a NIfTI file or a DICOM series folder), with the masks and findings.json written to ``--out``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

from ..fileio import atomic_output, save_nifti


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hippodeep",
        help="hippocampus, intracranial (eTIV) and cerebrum volumes of a 3D T1 MR (model mr-hippocampus)",
        description="Run the mr-hippocampus model (hippodeep) on a T1-weighted MR of the head: a NIfTI file "
        "or a DICOM series (folder, or one file of it). Research use, not for diagnosis.",
    )
    p.add_argument("t1", metavar="T1_PATH", help="NIfTI/MGZ file, DICOM folder or one DICOM file of the series")
    p.add_argument("--out", metavar="DIR", help="write findings.json, volumes.csv and the masks (NIfTI) here")
    p.add_argument("--json", action="store_true", help="print findings.json to stdout instead of the table")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--weights-dir", metavar="DIR", help="folder with the three weight files (offline use); "
                   "default $MEDIMGAI_WEIGHTS_DIR, then the cache, then download")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs available)")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.set_defaults(func=handler)


def write_outputs(out_dir: Path, result, analysis) -> list[Path]:
    """findings.json, volumes.csv and NIfTI masks (soft hippocampus masks as the original writes them,
    the binary label map at the documented threshold, the intracranial and cerebrum masks)."""
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    src = result.source
    masks = {
        "brain_mask.nii.gz": result.brain_mask,
        "cerebrum_mask.nii.gz": result.cerebrum_mask,
        "hippocampus_left_soft.nii.gz": result.hippocampus_left_soft,
        "hippocampus_right_soft.nii.gz": result.hippocampus_right_soft,
        "hippocampus_labels.nii.gz": result.label_map(),
    }
    written = []
    for name, arr in masks.items():
        path = out_dir / name
        save_nifti(src.with_array(np.asarray(arr, dtype=np.uint8)).to_nifti(), path)
        written.append(path)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["measurement", "value"])
    for k, v in analysis.study_measurements.items():
        w.writerow([k, repr(float(v))])
    with atomic_output(out_dir / "volumes.csv", "w") as fh:
        fh.write(buf.getvalue())
    written.append(out_dir / "volumes.csv")
    analysis.outputs.label_map = str(out_dir / "hippocampus_labels.nii.gz")
    analysis.outputs.instance_map = analysis.outputs.label_map  # one value per finding (1 left, 2 right)
    written.append(analysis.write(out_dir / "findings.json"))
    return written


def format_table(analysis, source: str, seconds: float) -> str:
    m = analysis.study_measurements
    rows = [
        ("Intracranial volume (eTIV)", f"{m['etiv_mm3']:,.0f} mm3"),
        ("Cerebrum", f"{m['cerebrum_mm3']:,.0f} mm3"),
        ("Left hippocampus", f"{m['hippocampus_left_mm3']:,.0f} mm3"),
        ("Right hippocampus", f"{m['hippocampus_right_mm3']:,.0f} mm3"),
        ("Hippocampi / eTIV", f"{100 * m['hippocampal_fraction_of_etiv']:.3f} %"),
        ("Asymmetry (L-R)/mean", f"{100 * m['hippocampal_asymmetry_index']:+.2f} %"),
    ]
    width = max(len(r[0]) for r in rows)
    ctx = analysis.context
    lines = [f"{analysis.model.id} {analysis.model.version} on {source} ({ctx.get('device', '')}, {seconds:.1f} s)"]
    lines += [f"  {name:<{width}}  {value:>16}" for name, value in rows]
    lines += [f"  warning: {w}" for w in analysis.warnings]
    lines.append("  research use only; not for diagnosis")
    return "\n".join(lines)


def handler(args: argparse.Namespace) -> int:
    from ..models.hippodeep.checks import check_input
    from ..models.hippodeep.inputs import load_t1
    from ..models.hippodeep.model import HippodeepModel

    t0 = time.perf_counter()
    volume = load_t1(args.t1, args.series)
    check_input(volume)  # refuse a CT / T2 / partial image before loading the networks
    model = HippodeepModel.load(
        weights_dir=args.weights_dir,
        device=args.device,
        threads=args.threads,
        offline=True if args.offline else None,
        show_progress=sys.stderr.isatty(),
    )
    result = model.analyze(volume)
    analysis = model.to_analysis_result(result)
    analysis.timings_s["wall_s"] = time.perf_counter() - t0
    if args.out:
        write_outputs(Path(args.out), result, analysis)
    if args.json:
        print(json.dumps(analysis.to_json(), indent=2))
    else:
        print(format_table(analysis, Path(args.t1).name, time.perf_counter() - t0))
        if args.out:
            print(f"  outputs in {args.out}")
    return 0
