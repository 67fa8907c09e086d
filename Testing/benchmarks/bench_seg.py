"""SEG writing: ours (highdicom, uint8 label map) vs dcmqi ``itkimage2segimage``, same label map,
same source series, 512 x 512 x 300 with 5 segments.

    python -m Testing.benchmarks.bench_seg [--runs 5] [--slices 300] [--work DIR]

Each figure is the median of ``--runs`` alternating runs (dcmqi, then each of ours, repeat):
- dcmqi: the ``itkimage2segimage`` process (reads the NRRD label map and the DICOM directory,
  writes the SEG); peak RSS from ``/usr/bin/time -v``;
- ours, pipeline step: build the SEG from the label map and source headers the pipeline already
  holds in memory, write it atomically (what ``export_study`` does after inference);
- ours, from files, warm: also read the source headers and the NRRD, in a long-running process;
- ours, from files, fresh process: the same as a new ``python`` process (imports and highdicom's
  first-call cost included), peak RSS from ``/usr/bin/time -v``.
The ratio is dcmqi time / our time (>1 = we are faster). Both outputs are checked for the same
number of frames and segments.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DCMQI = Path(sys.executable).parent / "itkimage2segimage"

SEGMENTS = [  # (label, SNOMED type) and an ellipsoid (centre ijk fraction, semi axes in voxels)
    ("Nodule 1", ("27925004", "Nodule"), (0.30, 0.40, 0.30), (40, 30, 25)),
    ("Nodule 2", ("27925004", "Nodule"), (0.70, 0.40, 0.45), (25, 25, 20)),
    ("Nodule 3", ("27925004", "Nodule"), (0.50, 0.65, 0.60), (15, 12, 10)),
    ("Mass", ("4147007", "Mass"), (0.50, 0.50, 0.25), (90, 70, 40)),
    ("Lesion", ("52988006", "Lesion"), (0.35, 0.60, 0.80), (60, 50, 35)),
]


def make_inputs(work: Path, n_slices: int) -> tuple[Path, Path, Path]:
    """CT series (512 x 512 x n), the 5-segment label map as NRRD, dcmqi's metadata JSON."""
    import SimpleITK as sitk

    from MedImgAILib.volume import Volume, affine_from_geometry
    from Testing.unit._analytic_shapes import write_ct_series

    ct_dir, nrrd, meta = work / "ct", work / "labels.nrrd", work / "dcmqi.json"
    if (work / "ready").exists():
        return ct_dir, nrrd, meta
    shape = (n_slices, 512, 512)
    aff = affine_from_geometry((-200.0, -200.0, -300.0), (0.78125, 0.78125, 1.0), np.eye(3))
    rng = np.random.default_rng(0)
    ct = Volume(array=(rng.normal(-800, 40, shape)).astype(np.float32), affine=aff)
    labels = np.zeros(shape, dtype=np.uint8)
    for n, (_l, _c, frac, semi) in enumerate(SEGMENTS, start=1):
        c = np.array(frac[::-1]) * np.array(shape)  # (k, j, i)
        s = np.array(semi[::-1], dtype=float)
        lo = np.maximum((c - s).astype(int), 0)
        hi = np.minimum((c + s).astype(int) + 1, shape)
        k, j, i = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = ((k - c[0]) / s[0]) ** 2 + ((j - c[1]) / s[1]) ** 2 + ((i - c[2]) / s[2]) ** 2 <= 1
        sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        sub[inside & (sub == 0)] = n
    ct.array[labels > 0] = 40
    write_ct_series(ct, ct_dir)
    img = sitk.GetImageFromArray(labels)
    img.SetOrigin(ct.origin)
    img.SetSpacing(ct.spacing)
    sitk.WriteImage(img, str(nrrd), useCompression=True)
    attrs = []
    for n, (label, (code, meaning), _f, _s) in enumerate(SEGMENTS, start=1):
        attrs.append({
            "labelID": n,
            "SegmentLabel": label,
            "SegmentDescription": label,
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": "bench",
            "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": "Morphologically abnormal structure"},
            "SegmentedPropertyTypeCodeSequence": {"CodeValue": code, "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": meaning},
            "TrackingIdentifier": label,
            "TrackingUniqueIdentifier": f"2.25.{1000 + n}",
            "recommendedDisplayRGBValue": [200, 100, 50],
        })
    meta.write_text(json.dumps({
        "ContentCreatorName": "bench", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "bench", "SeriesNumber": "300", "InstanceNumber": "1", "BodyPartExamined": "CHEST",
        "segmentAttributes": [attrs],
    }))
    (work / "ready").write_text("ok")
    return ct_dir, nrrd, meta


def load_inputs(ct_dir: Path, nrrd: Path):
    import SimpleITK as sitk

    from MedImgAILib.export import source_datasets

    return source_datasets(sorted(ct_dir.glob("*.dcm"))), sitk.GetArrayFromImage(sitk.ReadImage(str(nrrd)))


def write_step(srcs, labels: np.ndarray, out: Path) -> None:
    """The pipeline's SEG step: label map + source headers in memory -> SEG file (atomic)."""
    from MedImgAILib.export import DeviceInfo, build_seg, write_seg
    from MedImgAILib.export.seg import SegmentSpec
    from MedImgAILib.results import Code

    cat = Code(value="49755003", scheme="SCT", meaning="Morphologically abnormal structure")
    segs = [SegmentSpec(value=n, label=l, category=cat, type=Code(value=c, scheme="SCT", meaning=m),
                        tracking_id=l, tracking_uid=f"2.25.{1000 + n}")
            for n, (l, (c, m), _f, _s) in enumerate(SEGMENTS, start=1)]
    write_seg(build_seg(labels, srcs, segs, DeviceInfo("bench", "1")), out)


def ours(ct_dir: Path, nrrd: Path, out: Path) -> None:
    """Everything for this job from files: headers, label map, SEG build, atomic write."""
    write_step(*load_inputs(ct_dir, nrrd), out)


def run_process(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, from /usr/bin/time -v) of one command."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name, *cmd], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, cwd=REPO)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr.decode()[-2000:]}")
        rss_kb = next(int(line.split(":")[1]) for line in tf.read().splitlines() if "Maximum resident" in line)
    return dt, rss_kb / 1024.0


def frames_and_segments(path: Path) -> tuple[int, int]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.NumberOfFrames), len(ds.SegmentSequence)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--work", type=Path, default=None, help="keep inputs here between invocations")
    ap.add_argument("--ours-once", nargs=3, metavar=("CT_DIR", "NRRD", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.ours_once:
        ours(Path(a.ours_once[0]), Path(a.ours_once[1]), Path(a.ours_once[2]))
        return 0
    if not DCMQI.exists():
        print(f"dcmqi's itkimage2segimage not found beside {sys.executable}", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.gettempdir()) / f"medimgai-bench-seg-{a.slices}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ct_dir, nrrd, meta = make_inputs(work, a.slices)
    print(f"inputs: 512x512x{a.slices} CT series + 5-segment label map in {work} "
          f"(prepared in {time.perf_counter() - t0:.1f} s)")

    ours(ct_dir, nrrd, work / "warmup.dcm")  # the warm case: highdicom's first call already paid
    srcs, labels = load_inputs(ct_dir, nrrd)
    t_dcmqi, t_cold, t_warm, t_step, m_dcmqi, m_cold = [], [], [], [], [], []
    for r in range(a.runs):
        dt, mem = run_process([str(DCMQI), "--inputImageList", str(nrrd), "--inputDICOMDirectory", str(ct_dir),
                               "--inputMetadata", str(meta), "--outputDICOM", str(work / "dcmqi.dcm")])
        t_dcmqi.append(dt)
        m_dcmqi.append(mem)
        dt, mem = run_process([sys.executable, "-m", "Testing.benchmarks.bench_seg", "--ours-once",
                               str(ct_dir), str(nrrd), str(work / "ours_cold.dcm")])
        t_cold.append(dt)
        m_cold.append(mem)
        t1 = time.perf_counter()
        ours(ct_dir, nrrd, work / "ours_warm.dcm")
        t_warm.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        write_step(srcs, labels, work / "ours_step.dcm")
        t_step.append(time.perf_counter() - t1)
        print(f"run {r + 1}: dcmqi {t_dcmqi[-1]:.2f} s | ours: step {t_step[-1]:.2f} s, "
              f"from files warm {t_warm[-1]:.2f} s, fresh process {t_cold[-1]:.2f} s")

    fd, sd = frames_and_segments(work / "dcmqi.dcm")
    fo, so = frames_and_segments(work / "ours_warm.dcm")
    md, mc, mw = statistics.median(t_dcmqi), statistics.median(t_cold), statistics.median(t_warm)
    ms = statistics.median(t_step)
    print(f"outputs: dcmqi {fd} frames / {sd} segments, ours {fo} frames / {so} segments "
          f"({(work / 'dcmqi.dcm').stat().st_size / 1e6:.1f} MB vs {(work / 'ours_warm.dcm').stat().st_size / 1e6:.1f} MB)")
    print(f"median of {a.runs}: dcmqi itkimage2segimage       {md:6.2f} s (peak {statistics.median(m_dcmqi):.0f} MiB)")
    print(f"median of {a.runs}: ours, pipeline step           {ms:6.2f} s  ratio dcmqi/ours {md / ms:5.2f}x")
    print(f"median of {a.runs}: ours, from files, warm        {mw:6.2f} s  ratio dcmqi/ours {md / mw:5.2f}x")
    print(f"median of {a.runs}: ours, from files, new process {mc:6.2f} s  ratio dcmqi/ours {md / mc:5.2f}x "
          f"(peak {statistics.median(m_cold):.0f} MiB)")
    print("target: >= 2x for the pipeline step (inputs already in memory after inference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
