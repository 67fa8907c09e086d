"""Benchmark: mr-hippocampus (hippodeep) time per subject and peak memory on the example T1.

    python -m Testing.benchmarks.bench_hippodeep [--runs 3] [--subjects 3]

Each run is a fresh Python process (imports, weight loading, then ``--subjects`` analyses of
example_brain_t1.nii.gz through ``HippodeepModel.analyze``); it reports process start-up, wall and CPU
time per subject (``time.perf_counter`` / ``time.process_time``) and peak RSS (``resource.getrusage``).
Two configurations alternate run by run: this library's default threads (the CPUs available) and the
original's forced ``torch.set_num_threads(4)``. The original program itself is not in this repository;
its figures on this machine type come from shared/models/hippodeep/REFERENCE.md (measured with the
same torch 2.13.0 on 2 logical CPUs): 2.46-2.74 s per warm subject (median 2.55 s), 4.01 s cold,
peak RSS 0.57-0.63 GB. Targets: no slower than those, peak <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: REFERENCE.md, "Runtime on this CPU": the original's own per-subject timer, warm runs 2-5
ORIGINAL_WARM_S = [2.49, 2.55, 2.74, 2.46]
ORIGINAL_COLD_S = 4.01
ORIGINAL_PEAK_GB = 0.631  # /usr/bin/time max RSS, run 1
TARGET_PEAK_GB = 1.0


def shared_dir() -> Path:
    env = os.environ.get("MEDIMGAI_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def _upsampled(volume, factor: float):
    """The example on a finer grid (trilinear): a stand-in for a 1 mm acquisition's array size."""
    import numpy as np
    import scipy.ndimage

    from MedImgAILib.volume import Volume

    arr = scipy.ndimage.zoom(volume.array.astype(np.float32), factor, order=1)
    aff = volume.affine.copy()
    aff[:3, :3] /= factor
    return Volume(array=arr, affine=aff)


def child(subjects: int, threads: int | None, upsample: float = 1.0) -> None:
    t_start = time.perf_counter()
    from MedImgAILib.models.hippodeep import HippodeepModel, load_t1

    hd = shared_dir() / "models" / "hippodeep"
    model = HippodeepModel.load(weights_dir=hd, device="cpu", threads=threads, offline=True)
    startup = time.perf_counter() - t_start
    walls, cpus, vols = [], [], []
    for _ in range(subjects):
        w0, c0 = time.perf_counter(), time.process_time()
        volume = load_t1(hd / "example_brain_t1.nii.gz")  # reading is part of a subject, as in the original's timer
        if upsample != 1.0:
            volume = _upsampled(volume, upsample)
        r = model.analyze(volume)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        vols.append([r.etiv_mm3, r.hippocampus_left_mm3, r.hippocampus_right_mm3])
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"startup_s": startup, "wall_s": walls, "cpu_s": cpus, "peak_gb": peak_kb / 1024**2,
                      "threads": model.threads, "volumes": vols[-1]}))


def run_measured(cmd: list[str], cwd: Path) -> tuple[str, float, float, float]:
    """Run a child; return (stdout, wall s, CPU s user+sys, peak RSS GB) from its own rusage."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"benchmark child {cmd} failed:\n{err.read()}")
        return out.read(), wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024**2


def run_child(subjects: int, threads: int | None, upsample: float = 1.0) -> dict:
    cmd = [sys.executable, "-m", "Testing.benchmarks.bench_hippodeep", "--child", "--subjects", str(subjects),
           "--upsample", str(upsample)]
    if threads:
        cmd += ["--threads", str(threads)]
    stdout, wall, _cpu, peak = run_measured(cmd, REPO)
    out = json.loads(stdout.strip().splitlines()[-1])
    out["process_s"], out["peak_gb"] = wall, peak
    return out


def run_original(original_dir: Path) -> dict:
    """The upstream program from a checkout (``hippodeep.py`` + ``torchparams/``), on a copy of the
    example in a scratch folder; its own per-subject timer ("Elapsed time for subject")."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(shared_dir() / "models" / "hippodeep" / "example_brain_t1.nii.gz", tmp)
        stdout, wall, cpu, peak = run_measured([sys.executable, str(original_dir / "hippodeep.py"), "example_brain_t1.nii.gz"], Path(tmp))
    m = re.search(r"Elapsed time for subject\s+([0-9.]+)s", stdout)
    if not m:
        raise SystemExit(f"no 'Elapsed time for subject' in the original's output:\n{stdout}")
    return {"wall_s": [float(m.group(1))], "process_s": wall, "cpu_process_s": cpu, "peak_gb": peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="processes per configuration (alternating)")
    ap.add_argument("--subjects", type=int, default=3, help="subjects analysed per process")
    ap.add_argument("--original", metavar="DIR", type=Path,
                    help="a checkout of bthyreau/hippodeep_pytorch: run it too, alternating, as the same-run reference")
    ap.add_argument("--large", action="store_true",
                    help="also run the example upsampled to 1 mm (240x240x163): time and memory on a 1 mm-sized array")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--upsample", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.subjects, args.threads, args.upsample)
        return 0

    configs: dict[str, tuple[int | None, float]] = {
        "ours (default threads)": (None, 1.0),
        "ours, 4 threads as the original": (4, 1.0),
    }
    if args.large:
        configs["ours, example upsampled to 1 mm"] = (None, 1.75)
    results: dict[str, list[dict]] = {k: [] for k in configs}
    original: list[dict] = []
    for i in range(args.runs):
        for name, (threads, upsample) in configs.items():
            results[name].append(run_child(args.subjects, threads, upsample))
            print(f"run {i + 1}/{args.runs} {name}: done", file=sys.stderr)
        if args.original:
            original.append(run_original(args.original))
            print(f"run {i + 1}/{args.runs} original: done", file=sys.stderr)

    orig_warm = statistics.median(ORIGINAL_WARM_S)
    if original:
        # same-run reference: the original's first (only) subject per process is a cold one
        orig_cold = statistics.median(r["wall_s"][0] for r in original)
        print(f"original, measured in this run ({len(original)} processes): {orig_cold:.2f} s/subject "
              f"(its own timer, one subject per process), process {statistics.median(r['process_s'] for r in original):.2f} s, "
              f"peak RSS {max(r['peak_gb'] for r in original):.2f} GB")
    print(f"hippodeep benchmark: example_brain_t1 (137x137x93, 1.75 mm), {args.runs} processes x {args.subjects} subjects "
          f"per configuration, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"original (REFERENCE.md, same machine type): warm {orig_warm:.2f} s/subject (median of "
          f"{ORIGINAL_WARM_S}), cold {ORIGINAL_COLD_S:.2f} s, peak RSS {ORIGINAL_PEAK_GB:.2f} GB")
    header = f"{'configuration':<34} {'threads':>7} {'first s':>8} {'warm s':>7} {'warm cpu s':>10} {'startup s':>9} {'peak GB':>8} {'warm/orig':>9} {'first/orig cold':>15}"
    print(header)
    for name, runs in results.items():
        first = statistics.median(r["wall_s"][0] for r in runs)
        warm = statistics.median(w for r in runs for w in r["wall_s"][1:]) if args.subjects > 1 else first
        warm_cpu = statistics.median(c for r in runs for c in r["cpu_s"][1:]) if args.subjects > 1 else runs[0]["cpu_s"][0]
        startup = statistics.median(r["startup_s"] for r in runs)
        peak = max(r["peak_gb"] for r in runs)
        print(f"{name:<34} {runs[0]['threads']:>7} {first:>8.2f} {warm:>7.2f} {warm_cpu:>10.2f} {startup:>9.2f} "
              f"{peak:>8.2f} {warm / orig_warm:>9.2f} {first / ORIGINAL_COLD_S:>15.2f}")
    ours = results["ours (default threads)"]
    warm = statistics.median(w for r in ours for w in r["wall_s"][1:]) if args.subjects > 1 else statistics.median(r["wall_s"][0] for r in ours)
    peak = max(r["peak_gb"] for r in ours)
    if original:
        ours_first = statistics.median(r["wall_s"][0] for r in ours)
        print(f"same-run ratio, first subject per process (ours / original): {ours_first / orig_cold:.2f}")
    print(f"target: warm s/subject <= original ({orig_warm:.2f} s): {'met' if warm <= orig_warm else 'NOT met'} "
          f"(ratio {warm / orig_warm:.2f}); peak <= {TARGET_PEAK_GB:.1f} GB: {'met' if peak <= TARGET_PEAK_GB else 'NOT met'} ({peak:.2f} GB)")
    print(f"volumes (last run): eTIV {ours[-1]['volumes'][0]:.1f}, hippocampus L {ours[-1]['volumes'][1]:.3f}, R {ours[-1]['volumes'][2]:.3f} mm3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
