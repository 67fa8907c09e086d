"""Series loading speed and memory: MedImgAILib ``load_volume`` vs SimpleITK ``ImageSeriesReader``.

    python -m Testing.benchmarks.bench_load [--slices 300] [--runs 5] [--dir DIR] [--keep]

Writes (once, into DIR or a temporary folder) a 512 x 512 x N CT series: one uncompressed file per
slice, int16 stored values with RescaleIntercept -1024, file names in random order and instance numbers
running opposite to z, as scanners write them. Then loads it from the folder path with each reader in a
fresh subprocess, alternating which goes first, ``--runs`` times each (after one discarded warm-up of
each, so both read from the page cache). Each subprocess imports its library first, then times only
the load: scan + sort + read + rescale for ours; GetGDCMSeriesFileNames + Execute for SimpleITK (its
equivalent of finding and ordering the files). Peak memory is the child's ``ru_maxrss``
(``resource.getrusage(RUSAGE_SELF)`` at exit), reported as a whole and above the RSS after imports.

Prints medians, the speed ratio (SimpleITK time / ours) and each peak against the size of the volume
the reader produced. Targets (issue 2): ratio >= 1.5, our peak <= 1.5 x our volume's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, resource, sys, time
which, folder = sys.argv[1], sys.argv[2]
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
if which == "ours":
    from MedImgAILib.dicom import load_volume
    import numpy as np, pydicom, pydicom.pixels  # imported up front, like SimpleITK's library
    base = rss_mb()
    t = time.perf_counter()
    vol = load_volume(folder)
    dt = time.perf_counter() - t
    nbytes, shape, dtype = vol.array.nbytes, vol.array.shape, str(vol.array.dtype)
    check = float(vol.array[::7, ::7, ::7].astype("float64").sum())
else:
    import SimpleITK as sitk
    import numpy as np
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    base = rss_mb()
    t = time.perf_counter()
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(folder))
    img = r.Execute()
    dt = time.perf_counter() - t
    a = sitk.GetArrayViewFromImage(img)
    nbytes, shape, dtype = a.nbytes, a.shape, str(a.dtype)
    check = float(a[::7, ::7, ::7].astype("float64").sum())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(seconds=dt, peak_mb=peak, base_mb=base, nbytes=nbytes, shape=shape, dtype=dtype, check=check)))
"""


def write_ct_series(folder: Path, n_slices: int, size: int = 512, seed: int = 1) -> None:
    """A chest-like CT: body ellipse (soft tissue), two lungs (air), noise; 1 mm slices, -1024 HU outside."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    body = (xx / (0.42 * size)) ** 2 + (yy / (0.30 * size)) ** 2 <= 1
    lung_l = ((xx + 0.18 * size) / (0.12 * size)) ** 2 + (yy / (0.2 * size)) ** 2 <= 1
    lung_r = ((xx - 0.18 * size) / (0.12 * size)) ** 2 + (yy / (0.2 * size)) ** 2 <= 1
    base = np.full((size, size), -1000, np.int16)
    base[body] = 40
    base[lung_l | lung_r] = -850
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    names = rng.permutation(n_slices)
    for k in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Bench^Phantom", "BENCH"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 2, n_slices - k
        ds.ImagePositionPatient = [-250.0, -250.0, -150.0 + 1.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [500.0 / size, 500.0 / size]
        ds.SliceThickness = 1.0
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        hu = base + rng.integers(-20, 21, size=base.shape, dtype=np.int16)
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{names[k]:05d}", enforce_file_format=True)
    _marker(folder).write_text(str(n_slices))


def _marker(folder: Path) -> Path:
    """Outside the series folder, so that neither reader meets a non-DICOM file there."""
    return folder.parent / f".{folder.name}.complete"


def run_child(which: str, folder: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(folder)], capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    if p.returncode != 0:
        raise SystemExit(f"{which} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="series folder (kept; reused when complete)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary series folder")
    args = ap.parse_args(argv)

    tmp = None
    folder = args.dir
    if folder is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
        folder = tmp / "series"
    marker = _marker(folder)
    if not (marker.exists() and marker.read_text() == str(args.slices)):
        if folder.exists():
            shutil.rmtree(folder)
        t = time.perf_counter()
        write_ct_series(folder, args.slices)
        print(f"wrote 512x512x{args.slices} CT series to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    try:
        run_child("ours", folder)  # warm-up: page cache, .pyc
        run_child("sitk", folder)
        res: dict[str, list[dict]] = {"ours": [], "sitk": []}
        for i in range(args.runs):
            order = ("ours", "sitk") if i % 2 == 0 else ("sitk", "ours")
            for which in order:
                res[which].append(run_child(which, folder))
        o, s = res["ours"], res["sitk"]
        assert abs(o[0]["check"] - s[0]["check"]) < 1e-6 * max(1.0, abs(s[0]["check"])), "readers disagree on values"
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in res.items()}
        peak = {k: statistics.median(r["peak_mb"] for r in v) for k, v in res.items()}
        base = {k: statistics.median(r["base_mb"] for r in v) for k, v in res.items()}
        vol_mb = {k: v[0]["nbytes"] / 2**20 for k, v in res.items()}
        print(f"series: 512x512x{args.slices} CT, {args.runs} alternating runs each, medians")
        for k, label in (("ours", "MedImgAILib load_volume"), ("sitk", "SimpleITK ImageSeriesReader")):
            runs = ", ".join(f"{r['seconds']:.3f}" for r in res[k])
            print(
                f"  {label:28s} {med[k]:7.3f} s  (runs: {runs})  "
                f"volume {res[k][0]['dtype']} {vol_mb[k]:.0f} MB  peak RSS {peak[k]:.0f} MB "
                f"(after imports {base[k]:.0f} MB, load adds {peak[k] - base[k]:.0f} MB)"
            )
        print(f"  speed ratio (SimpleITK / ours): {med['sitk'] / med['ours']:.2f}x   [target >= 1.5x]")
        print(
            f"  ours: peak RSS / volume size {peak['ours'] / vol_mb['ours']:.2f}x, "
            f"load's own peak / volume size {(peak['ours'] - base['ours']) / vol_mb['ours']:.2f}x   [target <= 1.5x]"
        )
        print(
            f"  SimpleITK: peak RSS / its volume size {peak['sitk'] / vol_mb['sitk']:.2f}x; "
            f"peak RSS ours / SimpleITK {peak['ours'] / peak['sitk']:.2f}x"
        )
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
