"""How long "Re-measure and re-categorize" keeps the Slicer UI busy, against the pipeline's own findings
step on the same label map (the reference: what ``medimgai analyze`` spends measuring).

    python -m Testing.benchmarks.bench_review [--runs 5]

Scene: the docs phantom (256 x 256 x 150, a solid and a part-solid nodule) in a headless slicer-core
scene; the solid nodule's segment dilated by one voxel (an edit), so the review re-measures it.
Prints medians of alternating runs and the ratio; peak RSS from getrusage.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]


def _session():
    spec = importlib.util.spec_from_file_location("make_screenshots", REPO / "docs" / "make_screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.build_session()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    from MedImgAILib.findings import NODULE, LabelSpec, extract_findings

    s = _session()
    solid = next(f for f in s.findings if f.type == "solid")
    grown = ndimage.binary_dilation(s.instance_labels == solid.instance_value)
    import slicer
    import vtk
    from vtk.util import numpy_support

    from MedImgAILib.scene.convert import ijk_to_ras_matrix

    nk, nj, ni = grown.shape
    img = slicer.vtkOrientedImageData()
    img.SetDimensions(ni, nj, nk)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = grown.astype(np.uint8).ravel()
    img.SetImageToWorldMatrix(ijk_to_ras_matrix(s.volume.affine))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(img, s.nodes.segmentation, s.nodes.segment_ids[solid.id], logic.MODE_REPLACE, img.GetExtent())

    labels = s.volume.with_array((s.instance_labels > 0).astype(np.uint8))
    specs = [LabelSpec(value=1, name="nodule", finding_code=NODULE)]
    ours, ref = [], []
    for _ in range(args.runs):  # alternating, so machine noise hits both alike
        t = time.perf_counter()
        corrected = s.remeasure("Reader^Bench")
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        extract_findings(labels, s.volume, label_specs=specs)
        ref.append(time.perf_counter() - t)
    rec = next(c for c in corrected.corrections if c.finding_id == solid.id)
    assert rec.action == "edited" and rec.dice is not None
    mo, mr = statistics.median(ours), statistics.median(ref)
    print(f"grid {s.volume.array.shape[::-1]} (i, j, k), {len(s.findings)} findings, 1 edited (dice {rec.dice:.3f})")
    print(f"review re-measure + re-categorize : median {mo * 1000:7.1f} ms over {args.runs} runs")
    print(f"pipeline findings step (reference): median {mr * 1000:7.1f} ms over {args.runs} runs")
    print(f"ratio ours / reference            : {mo / mr:.2f}")
    print(f"peak RSS                          : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
