"""Render the screenshots of docs/slicer.md offscreen from the scene layer (slicer-core, no Qt, no GPU).

    python docs/make_screenshots.py [--out docs/screenshots]

A chest-CT phantom (ldct-screening preset, seed 3) with a solid and a part-solid nodule; findings are
measured by the findings stage from the phantom's nodule labels (standing in for a model's output, so
the pictures do not depend on trained weights) and categorized by Lung-RADS v2022; the review scene is
built by ``ReviewSession`` and rendered through Slicer's own displayable managers, as in the module.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_session():
    from MedImgAILib.findings import NODULE, LabelSpec, extract_findings
    from MedImgAILib.phantoms import generate_phantom, spec_from_preset
    from MedImgAILib.results import AnalysisResult, ModelRef
    from MedImgAILib.rules import evaluate, make_context
    from MedImgAILib.scene import new_scene
    from MedImgAILib.scene.session import ReviewSession

    spec = spec_from_preset(
        "ldct-screening", seed=3,
        nodules=[{"type": "solid", "diameter_mm": 11.0, "side": "right"},
                 {"type": "part_solid", "diameter_mm": 14.0, "side": "left"}],
        acquisition={"slice_thickness_mm": 2.0, "reconstruction_interval_mm": 2.0, "matrix": 256, "fov_mm": 360.0},
    )
    case = generate_phantom(spec)
    vol = case.volume.with_array(np.round(case.volume.array).astype(np.int16))
    labels = vol.with_array((case.labels > 0).astype(np.uint8))
    findings, instance = extract_findings(labels, vol, label_specs=[LabelSpec(value=1, name="nodule", finding_code=NODULE)],
                                          return_instance_map=True)
    for n, f in enumerate(findings, start=1):
        f.instance_value = n
    context = make_context(screening=True, exam="baseline")
    result = AnalysisResult(model=ModelRef(id="ct-lung-nodule", version="1.0.0"), findings=findings)
    result = evaluate(result.findings, context, "lung-rads").apply_to(result, context)
    return ReviewSession(vol, instance.astype(np.int32), result, ctx=new_scene(), study_name="CT chest LDCT")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    s = build_session()
    from MedImgAILib.scene import render_slice

    solid = next(f for f in s.findings if f.type == "solid")
    part = next(f for f in s.findings if f.type == "part-solid")
    nk, nj, ni = s.volume.array.shape
    whole_slice = list(s.volume.ijk_to_lps([(ni - 1) / 2, (nj - 1) / 2, 0]))[:2] + [solid.center_lps_mm[2]]
    shots = {
        "overview.png": render_slice(s.ctx, s.nodes.volume, center_lps=whole_slice, size=(480, 480)),
        "review.png": s.render_finding(solid.id, size=(480, 480), field_of_view_mm=90.0),
        "review-part-solid.png": s.render_finding(part.id, size=(480, 480), field_of_view_mm=90.0),
    }
    s.reject(part.id)  # the Reject button: overlay and lines hidden, row kept and marked
    shots["rejected.png"] = s.render_finding(part.id, size=(480, 480), field_of_view_mm=90.0)
    for name, img in shots.items():
        img.save_png(out / name)
    for f in s.findings:
        cats = ", ".join(f"{c.system} {c.value}" for c in f.categories)
        print(f"{f.id} {f.type:11s} mean {f.mean_diameter_mm:5.1f} mm  volume {f.volume_mm3:7.0f} mm3  {cats}  [{f.status}]")
    print(f"{len(shots)} screenshots in {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
