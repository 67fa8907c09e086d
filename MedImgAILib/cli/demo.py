"""``medimgai demo``: the main job end to end on an embedded default, no external PACS needed.

A phantom chest-CT screening study goes into the embedded PACS (our listener with query/retrieve, on
127.0.0.1); then, as a department would: C-FIND the study, C-GET it, check the protocol, run the
ct-lung-nodule model, measure, categorise (Lung-RADS v2022 / Fleischner 2017), write SEG + SR + key
images, C-STORE them back, and show the findings table, the PACS contents and the time per stage.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="end-to-end demo: phantom study -> embedded PACS -> analyze -> SEG/SR back")
    p.add_argument("--out", default="demo-output", help="folder for the study, the PACS store and results")
    p.add_argument("--matrix", type=int, default=320, help="phantom matrix (512 = a full-size CT; 320 is quicker)")
    p.add_argument("--slice-thickness", type=float, default=1.25)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--device", help="cpu | cuda | mps (default: best available)")
    p.set_defaults(func=run)


def _step(console: Any, text: str) -> float:
    console.print(f"[bold cyan]>[/bold cyan] {text}")
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..pacs.client import find, store
    from ..pacs.listener import Listener, ListenerConfig
    from ..pacs.settings import Node, PacsSettings
    from ..phantoms import NoduleSpec, write_phantom_series
    from ..phantoms.spec import spec_from_preset
    from ..pipeline import AnalysisOptions, analyze
    from .analyze import print_result

    console = Console(width=160)
    out = Path(args.out).resolve()
    for sub in ("study", "pacs-store", "result"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = _step(console, "Writing a phantom low-dose chest CT (screening) with nodules of known size")
    # the ACR-STR low-dose screening acquisition (the ldct-screening preset), 64-year-old, baseline
    spec = spec_from_preset(
        "ldct-screening",
        seed=args.seed,
        nodules=[
            NoduleSpec(type="solid", diameter_mm=5.0, side="right").model_dump(),
            NoduleSpec(type="solid", diameter_mm=7.0, side="left").model_dump(),
            NoduleSpec(type="solid", diameter_mm=11.0, side="right").model_dump(),
            NoduleSpec(type="solid", diameter_mm=17.0, side="left").model_dump(),
        ],
        acquisition={"matrix": args.matrix, "slice_thickness_mm": args.slice_thickness, "fov_mm": 360.0},
        study={"patient_age_years": 64},
    )
    case = write_phantom_series(spec, out / "study", keep_volume=False)
    timings["phantom"] = time.perf_counter() - t

    t = _step(console, "Starting the embedded PACS (query/retrieve SCP) on 127.0.0.1")
    config = ListenerConfig(aet="MEDIMGAI-PACS", host="127.0.0.1", port=0, store_dir=out / "pacs-store",
                            quiet_seconds=3600, min_free_mb=50)
    pacs = Listener(config).start()
    try:
        node = Node(aet="MEDIMGAI-PACS", host="127.0.0.1", port=pacs.port, name="embedded")
        settings = PacsSettings(local_aet="MEDIMGAI", nodes={"embedded": node})
        config.move_destinations["MEDIMGAI"] = ("127.0.0.1", 0)
        sent = store(node, settings, case.files)
        timings["load PACS"] = time.perf_counter() - t
        console.print(f"  stored {sent.sent} CT images in the PACS ({sent.seconds:.1f} s)")

        t = _step(console, "C-FIND: today's chest CT studies")
        studies = find(node, settings, "study", modality="CT")
        timings["query"] = time.perf_counter() - t
        if not studies:
            console.print("[red]the embedded PACS returned no study[/red]")
            return 1
        study_uid = studies[0]["study_uid"]
        console.print(f"  found study {study_uid} ({studies[0].get('study_description', '')})")

        t = _step(console, "Retrieve, check protocol, run ct-lung-nodule, measure, categorise, export, send back")

        def progress(fraction: float, message: str) -> None:
            console.print(f"  [{fraction * 100:5.1f}%] {message}")

        result = analyze(
            f"embedded:{study_uid}", out / "result",
            AnalysisOptions(model_id="ct-lung-nodule", device=args.device, send_to="embedded", pacs_settings=settings),
            progress=progress,
        )
        timings["analyze"] = time.perf_counter() - t

        series = find(node, settings, "series", study_uid=study_uid)
    finally:
        pacs.stop()

    console.rule("Result")
    print_result(result)
    table = Table(title="The study in the PACS after the analysis")
    for col in ("Modality", "Series", "Description", "Instances"):
        table.add_column(col)
    for s in series:
        table.add_row(s.get("modality", ""), str(s.get("series_number", "")), s.get("series_description", ""),
                      str(s.get("n_instances", "")))
    console.print(table)
    _compare_with_truth(console, case.truth, result)
    tt = Table(title="Time per step (s)")
    tt.add_column("Step")
    tt.add_column("Seconds", justify="right")
    for k, v in {**timings, **{f"analyze: {k}": v for k, v in result.timings_s.items() if '.' not in k and k != 'total'}}.items():
        tt.add_row(k, f"{v:.2f}")
    console.print(tt)
    if "total.results" in result.timings_s:  # the point the reading radiologist waits for
        console.print(f"SEG + SR were in the PACS {result.timings_s['total.results']:.2f} s after the analysis started "
                      "(key images, image-quality measures and NIfTI maps followed).")
    console.print(f"Outputs in {out / 'result'}: findings.json, seg.dcm, sr.dcm, key_images/")
    return 0


def _compare_with_truth(console: Any, truth: dict[str, Any], result: Any) -> None:
    import numpy as np
    from rich.table import Table

    t = Table(title="Detection against the phantom's truth")
    for col in ("Truth nodule", "Type", "True mean diam. (mm)", "Found as", "Measured (mm)", "Volume error"):
        t.add_column(col)
    for n in truth.get("nodules", []):
        c = np.asarray(n["center_lps_mm"])
        best = min(result.findings, key=lambda f: np.linalg.norm(np.asarray(f.center_lps_mm) - c), default=None)
        hit = best is not None and np.linalg.norm(np.asarray(best.center_lps_mm) - c) < max(5.0, n.get("diameter_mm", 5))
        true_mean = n.get("axial_mean_diameter_mm") or n.get("diameter_mm")
        if hit:
            verr = 100.0 * (best.volume_mm3 - n["volume_mm3"]) / n["volume_mm3"] if n.get("volume_mm3") else float("nan")
            t.add_row(str(n.get("id", "")), n.get("type", ""), f"{true_mean:.1f}", best.id, f"{best.mean_diameter_mm:.1f}", f"{verr:+.0f}%")
        else:
            t.add_row(str(n.get("id", "")), n.get("type", ""), f"{true_mean:.1f}", "missed", "", "")
    console.print(t)
