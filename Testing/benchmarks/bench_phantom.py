"""Phantom generation speed: render + write a 512x512x300 chest-CT series, against writing the same
number of CT slices of the same size with SimpleITK (pure I/O, the floor any generator must pay).

    python -m Testing.benchmarks.bench_phantom [--matrix 512] [--slices 300] [--runs 3]

Each measurement runs in its own process (peak RSS from wait4), ours and the reference alternate,
medians are printed with the ratio. Shared machines are noisy: the ratio holds, absolute times do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

OURS = """
import sys, time
from MedImgAILib.phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, write_phantom_series
m, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
spec = PhantomSpec(seed=1, random_nodules=RandomNodules(count=5),
                   acquisition=AcquisitionSpec(matrix=m, slices=n, slice_thickness_mm=1.25, reconstruction_interval_mm=1.0))
t = time.perf_counter()
write_phantom_series(spec, out, keep_volume=False)
print(time.perf_counter() - t)
"""

IN_MEMORY = """
import sys, time
from MedImgAILib.phantoms import AcquisitionSpec, PhantomSpec, RandomNodules, generate_phantom
m, n = int(sys.argv[1]), int(sys.argv[2])
spec = PhantomSpec(seed=1, random_nodules=RandomNodules(count=5),
                   acquisition=AcquisitionSpec(matrix=m, slices=n, slice_thickness_mm=1.25, reconstruction_interval_mm=1.0))
t = time.perf_counter()
generate_phantom(spec)
print(time.perf_counter() - t)
"""

REFERENCE = """
import sys, time
import numpy as np, SimpleITK as sitk
m, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
arr = np.random.default_rng(0).integers(-1000, 1000, size=(n, m, m), dtype=np.int16)
t = time.perf_counter()
w = sitk.ImageFileWriter(); w.KeepOriginalImageUIDOn()
for k in range(n):
    sl = sitk.GetImageFromArray(arr[k])
    sl.SetMetaData("0008|0060", "CT"); sl.SetMetaData("0020|0032", f"0\\\\0\\\\{k}")
    sl.SetMetaData("0020|0013", str(k + 1))
    w.SetFileName(f"{out}/IM{k:05d}.dcm"); w.Execute(sl)
print(time.perf_counter() - t)
"""


def run(code: str, *args: str) -> tuple[float, float]:
    """(seconds reported by the child, peak RSS of the child in MiB)."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed (exit {proc.returncode})")
    return float(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    m, n = str(a.matrix), str(a.slices)
    ours, ref, mem = [], [], []
    ours_mem, ref_mem = [], []
    for r in range(a.runs):
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            t, rss = run(OURS, m, n, d1)
            ours.append(t); ours_mem.append(rss)
            t, rss = run(REFERENCE, m, n, d2)
            ref.append(t); ref_mem.append(rss)
        t, rss = run(IN_MEMORY, m, n)
        mem.append(t)
        print(f"run {r + 1}: phantom series {ours[-1]:.1f} s, SimpleITK write {ref[-1]:.1f} s, in-memory {mem[-1]:.1f} s",
              flush=True)
    vol_mib = a.matrix * a.matrix * a.slices * 2 / 2**20
    o, rf, im = statistics.median(ours), statistics.median(ref), statistics.median(mem)
    print(f"\n{a.matrix}x{a.matrix}x{a.slices}, {a.runs} runs, medians:")
    print(f"  phantom render + write (MedImgAILib): {o:.1f} s, peak RSS {statistics.median(ours_mem):.0f} MiB")
    print(f"  SimpleITK write of same-size slices:  {rf:.1f} s, peak RSS {statistics.median(ref_mem):.0f} MiB")
    print(f"  phantom in memory (generate_phantom): {im:.1f} s")
    print(f"  ratio phantom/write-only: {o / rf:.2f}x   (int16 volume {vol_mib:.0f} MiB)")


if __name__ == "__main__":
    main()
