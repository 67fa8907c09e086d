"""Export objects (SEG, SR TID 1500, key images): ours vs the libraries used as they come, per step,
on a 512 x 512 x N CT with five nodules (the pipeline's export after inference).

    python -m Testing.benchmarks.bench_export [--runs 7] [--slices 300] [--work DIR]

Steps: build_seg, build_key_images, build_sr, write_seg, write_sr, write_key_images (each run builds
fresh objects and writes them once, as ``export_study`` does). "ours" is the export package as it is;
"reference" is the same code with its shortcuts off: highdicom's own SR construction (content tree
copied, re-parsed and searched; every source image given as evidence), pydicom's own writer (no
pre-encoded sequences) and highdicom's own IOD table look-ups. The SEG's labelled-slice scan and
the key images' outline tracing are ours in both. Runs alternate (reference, ours); each figure is the
median over ``--runs``; CPU time (process) beside wall time, since the machines are shared. The two
ways' files are checked to hold the same elements (UIDs, dates and times aside).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS = ("build_seg", "build_key_images", "build_sr", "write_seg", "write_sr", "write_key_images")


def make_inputs(work: Path, n_slices: int):
    """A CT series on disk (512 x 512 x n), five solid nodules found and measured as the pipeline does."""
    from MedImgAILib.export import DeviceInfo, source_datasets
    from MedImgAILib.findings import LabelSpec, extract_findings
    from MedImgAILib.results import Category, Code
    from MedImgAILib.volume import Volume, affine_from_geometry
    from Testing.unit._analytic_shapes import write_ct_series

    shape = (n_slices, 512, 512)
    aff = affine_from_geometry((-200.0, -200.0, -150.0), (0.78125, 0.78125, 1.0), np.eye(3))
    rng = np.random.default_rng(0)
    hu = rng.normal(-850, 30, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    kk, jj, ii = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for n, (fk, fj, fi, r_mm) in enumerate([(0.4, 0.4, 0.3, 12), (0.5, 0.6, 0.7, 7), (0.6, 0.35, 0.65, 5),
                                            (0.45, 0.7, 0.35, 4), (0.55, 0.5, 0.5, 2.5)], start=1):
        ball = ((kk - fk * shape[0]) / r_mm) ** 2 + ((jj - fj * shape[1]) * 0.78125 / r_mm) ** 2 + \
            ((ii - fi * shape[2]) * 0.78125 / r_mm) ** 2 <= 1
        hu[ball] = 30.0
        labels[ball] = 1
    image = Volume(array=hu, affine=aff, modality="CT")
    paths = write_ct_series(image, work / "ct")
    spec = LabelSpec(value=1, name="nodule")
    findings, inst = extract_findings(image.with_array(labels), image, label_specs=[spec], return_instance_map=True)
    for f in findings:
        f.categories = [Category(system="Lung-RADS", version="v2022", value="4A", recommendation="3-month LDCT"),
                        Category(system="Fleischner", version="2017", value="not applicable")]
        f.site_code = Code(value="39607008", scheme="SCT", meaning="Lung")
    srcs = source_datasets(paths, image)
    device = DeviceInfo(model_id="ct-lung-nodule", model_version="1.2.0")
    return image, inst, findings, srcs, device, spec


@contextlib.contextmanager
def reference_mode():
    """The export's shortcuts off: the libraries' own ways (see the module docstring)."""
    import highdicom._standard_utils as su

    import MedImgAILib.export.common as common
    import MedImgAILib.export.sr as srm
    from MedImgAILib.export import _highdicom

    original = _highdicom.is_attribute_in_iod.__wrapped_lookup__
    holders = [m for m in (su, sys.modules["highdicom.base"], sys.modules["highdicom.sr.content"])]
    saved = (srm.SHORTCUTS, common.preencode_sequences)
    srm.SHORTCUTS, common.preencode_sequences = False, lambda ds: None
    for m in holders:
        m.is_attribute_in_iod = original
    try:
        yield
    finally:
        srm.SHORTCUTS, common.preencode_sequences = saved
        for m in holders:
            m.is_attribute_in_iod = _highdicom.is_attribute_in_iod


def one_run(inputs, out: Path) -> dict[str, tuple[float, float]]:
    """Each step once, fresh objects: {step: (wall s, cpu s)}."""
    from MedImgAILib.export import ExportUIDs, build_key_images, build_seg, build_sr, write_key_images, write_seg, write_sr
    from MedImgAILib.export.seg import segments_from_findings

    image, inst, findings, srcs, device, spec = inputs
    uids = ExportUIDs()
    made: dict = {}
    steps = {
        "build_seg": lambda: made.__setitem__("seg", build_seg(
            image.with_array(inst), srcs, segments_from_findings(findings, [spec]), device, uids,
            related_series=[uids.sr_series, uids.key_image_series])),
        "build_key_images": lambda: made.__setitem__("kis", build_key_images(
            image, findings, srcs, device, uids, instance_map=inst, related_series=[uids.seg_series, uids.sr_series])),
        "build_sr": lambda: made.__setitem__("sr", build_sr(
            findings, made["seg"], srcs, device, uids, extra_evidence=made["kis"],
            study_measurements={"total_nodule_volume_mm3": sum(f.volume_mm3 for f in findings)})),
        "write_seg": lambda: write_seg(made["seg"], out / "seg.dcm"),
        "write_sr": lambda: write_sr(made["sr"], out / "sr.dcm"),
        "write_key_images": lambda: write_key_images(made["kis"], out / "key_images"),
    }
    times = {}
    for name in STEPS:
        c0, t0 = time.process_time(), time.perf_counter()
        steps[name]()
        times[name] = (time.perf_counter() - t0, time.process_time() - c0)
    return times


def same_elements(a: Path, b: Path) -> bool:
    """The two files hold the same elements and values, UIDs (by order of appearance), dates and
    times aside."""
    import pydicom

    def flat(path: Path) -> list:
        out: list = []
        uids: dict = {}

        def walk(ds, where: str) -> None:
            for el in ds:
                key = f"{where}/{el.tag}"
                if el.VR == "SQ":
                    out.append((key, len(el.value)))
                    for n, item in enumerate(el.value):
                        walk(item, f"{key}[{n}]")
                elif el.VR == "UI":
                    out.append((key, uids.setdefault(str(el.value), len(uids))))
                elif el.VR not in ("DA", "TM", "DT"):
                    out.append((key, el.VR, el.value if el.tag != 0x7FE00010 else hash(el.value)))

        ds = pydicom.dcmread(path)
        walk(ds, "")
        return out

    return flat(a) == flat(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"inputs: 512 x 512 x {args.slices} CT, five nodules ...", flush=True)
        inputs = make_inputs(work, args.slices)
        print(f"{len(inputs[2])} findings; SEG frames from {int(inputs[1].reshape(args.slices, -1).any(axis=1).sum())} slices")
        with reference_mode():  # warm-up: first-call costs out of the figures
            one_run(inputs, work / "warm_ref")
        one_run(inputs, work / "warm")
        ours: dict[str, list] = {s: [] for s in STEPS}
        ref: dict[str, list] = {s: [] for s in STEPS}
        for r in range(args.runs):
            with reference_mode():
                for s, v in one_run(inputs, work / "ref").items():
                    ref[s].append(v)
            for s, v in one_run(inputs, work / "ours").items():
                ours[s].append(v)
        print(f"\nmedians of {args.runs} alternating runs (s)   reference wall / cpu      ours wall / cpu     ratio (cpu)")
        tot = [0.0, 0.0, 0.0, 0.0]
        for s in STEPS:
            rw, rc = (statistics.median(x[i] for x in ref[s]) for i in (0, 1))
            ow, oc = (statistics.median(x[i] for x in ours[s]) for i in (0, 1))
            tot = [tot[0] + rw, tot[1] + rc, tot[2] + ow, tot[3] + oc]
            print(f"{s:<20} {rw:>12.4f} / {rc:.4f}    {ow:>10.4f} / {oc:.4f}    {rc / oc:6.2f}x")
        print(f"{'total':<20} {tot[0]:>12.4f} / {tot[1]:.4f}    {tot[2]:>10.4f} / {tot[3]:.4f}    {tot[1] / tot[3]:6.2f}x")
        checks = [("seg.dcm", "seg.dcm"), ("sr.dcm", "sr.dcm")] + [
            (f"key_images/{p.name}", f"key_images/{p.name}") for p in sorted((work / "ours" / "key_images").glob("*.dcm"))]
        same = all(same_elements(work / "ref" / a, work / "ours" / b) for a, b in checks)
        print(f"reference and ours hold the same elements (UIDs, dates, times aside): {same}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
