"""Cost of the protocol check relative to loading the series it checks.

    python -m Testing.benchmarks.bench_protocols [--slices 200] [--runs 5]

Writes a 512 x 512 x N chest phantom CT series (the protocol tests' phantom: body, fat rim, lungs,
30 HU white noise) once into a temporary folder. Then, alternating, ``--runs`` times each after one
warm-up: the reference, ``MedImgAILib.dicom.load_volume`` (scan + sort + read + rescale), and ours,
``check_series`` with image quality on the loaded volume (noise, CT numbers, lung coverage, spacing,
streak and motion indicators, derived values and all criteria), plus the header-only check. Prints
medians, the ratio ours / load, and the peak RSS increase of the full check in a fresh subprocess
that reads the volume from a .npy (``tracemalloc`` peak of the check's allocations, and the
process's ``ru_maxrss``) against the volume's size.
The check reads every voxel once (block sums, minima and maxima in one pass; metal is counted only
in slices whose blocks hold some), then works on a coarse grid and reads only the noise tiles'
pixels again, so it costs a small multiple of a load from the page cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# the child loads the volume from a .npy (no loader peak to hide the check's), then checks it
CHILD = r"""
import os, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from MedImgAILib.protocols import check_series
from MedImgAILib.dicom.metadata import SeriesMetadata
from MedImgAILib.volume import Volume
arr = np.load(sys.argv[1])
aff = np.load(sys.argv[1] + ".affine.npy")
md = SeriesMetadata.model_validate_json(open(sys.argv[1] + ".md.json").read())
vol = Volume(array=arr, affine=aff, modality="CT", metadata=md)
import tracemalloc
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
check_series(md, vol)
traced_peak = tracemalloc.get_traced_memory()[1]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base / 1024, peak / 1024, arr.nbytes / 2**20, traced_peak / 2**20)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from MedImgAILib.dicom import load_volume
    from MedImgAILib.protocols import check_series, default_library
    from Testing.protocols.phantom_series import chest_hu, write_ct_series

    lib = default_library()
    with tempfile.TemporaryDirectory() as tmp:
        n = args.slices
        folder = write_ct_series(chest_hu(30.0, nk=n, n=512, pix=0.7, lung_slices=(8, n - 8)),
                                 Path(tmp) / "series", pix=0.7)
        load_t, check_t, header_t = [], [], []
        vol = load_volume(folder)  # warm-up: page cache, imports
        check_series(vol.metadata, vol, library=lib)
        for _ in range(args.runs):
            t = time.perf_counter()
            vol = load_volume(folder)
            load_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            rep = check_series(vol.metadata, vol, library=lib)
            check_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            check_series(vol.metadata, None, library=lib,
                         slice_positions_mm=vol.extra.get("slice_positions_along_normal_mm"))
            header_t.append(time.perf_counter() - t)
        import numpy as np

        npy = Path(tmp) / "vol.npy"
        np.save(npy, vol.array)
        np.save(str(npy) + ".affine.npy", vol.affine)
        Path(str(npy) + ".md.json").write_text(vol.metadata.model_dump_json())
        out = subprocess.run([sys.executable, "-c", CHILD, str(npy), str(REPO)], capture_output=True,
                             text=True, check=True).stdout.split()
        base_mb, peak_mb, vol_mb, traced_mb = (float(x) for x in out)
    ml, mc, mh = (statistics.median(x) for x in (load_t, check_t, header_t))
    print(f"series 512x512x{n}, {rep.protocol.id if rep.protocol else 'no protocol'}: {rep.summary_line()}")
    print(f"noise measured {rep.image_quality['noise_sd_hu']} HU (true 30)")
    print(f"load_volume (reference)   median {ml:7.3f} s  over {args.runs} runs")
    print(f"check_series + IQ (ours)  median {mc:7.3f} s  ratio ours/load {mc / ml:5.2f}")
    print(f"check_series header-only  median {mh * 1000:7.2f} ms")
    print(f"memory: peak of the check's own allocations (tracemalloc) {traced_mb:.0f} MB = "
          f"{traced_mb / vol_mb:.2f} x the volume ({vol_mb:.0f} MB as loaded); process max RSS "
          f"{base_mb:.0f} MB before, {peak_mb:.0f} MB after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
