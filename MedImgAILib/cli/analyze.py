"""``medimgai analyze SOURCE --model ID --out DIR``: the whole loop on one study."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import MedImgAIError


def register(sub: Any) -> None:
    p = sub.add_parser("analyze", help="run a model on a study and write findings.json, SEG, SR and key images",
                       description="SOURCE: a DICOM folder, an image file (NIfTI/NRRD, research use) or NODE:STUDY_UID "
                                   "(NODE a configured PACS node or AET@host:port).")
    p.add_argument("source")
    p.add_argument("--model", help="model card id (default: the card that matches the series)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--series", help="SeriesInstanceUID to analyse (default: the model's modality, most slices)")
    p.add_argument("--send", metavar="NODE", help="store SEG/SR/key images to this PACS node")
    p.add_argument("--context", help="clinical context, e.g. age=64,risk=high,screening=true (wins over the headers)")
    p.add_argument("--device", help="cpu | cuda | cuda:N | mps (default: best available)")
    p.add_argument("--weights-dir", help="folder holding model weights (offline use)")
    p.add_argument("--protocol", help="check against this protocol id instead of the best match")
    p.add_argument("--policy", choices=["warn", "refuse"], default="warn",
                   help="what to do with a series that does not meet its protocol (default: warn)")
    p.add_argument("--no-key-images", action="store_true")
    p.add_argument("--store", metavar="DB", help="result store (SQLite path or URL): priors in, result out")
    p.add_argument("--pacs-settings", metavar="FILE", help="PACS settings (TOML/YAML)")
    p.add_argument("--observer", help="radiologist confirming the result (Family^Given)")
    p.add_argument("--json", action="store_true", help="print findings.json instead of a table")
    p.add_argument("--progress-json", action="store_true",
                   help="worker mode: JSON event lines on stdout (progress, result, error) for a UI")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> Any:
    from ..pipeline import AnalysisOptions
    from ..protocols.conformance import ConformancePolicy
    from ..rules.context import parse_context_arg

    settings = None
    if args.pacs_settings:
        from ..pacs.settings import load_settings

        settings = load_settings(args.pacs_settings)
    store = None
    if args.store:
        from ..tracking import ResultStore

        store = ResultStore(args.store)
    return AnalysisOptions(
        model_id=args.model, series_uid=args.series, device=args.device, weights_dir=args.weights_dir,
        context=parse_context_arg(args.context) if args.context else {}, protocol_id=args.protocol,
        policy=ConformancePolicy(on_nonconformant=args.policy), key_images=not args.no_key_images,
        send_to=args.send, pacs_settings=settings, store=store, observer=args.observer,
    )


def run(args: argparse.Namespace) -> int:
    from ..background import emit
    from ..pipeline import analyze

    if args.progress_json:
        import signal

        cancel = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: cancel.set())
        try:
            result = analyze(args.source, args.out, options_from_args(args),
                             progress=lambda f, m: emit("progress", fraction=round(f, 4), message=m), cancel=cancel)
        except MedImgAIError as exc:
            emit("error", message=str(exc), kind=exc.kind)
            return 2
        emit("result", findings_json=str(Path(args.out) / "findings.json"), findings=len(result.findings))
        return 0

    result = analyze(args.source, args.out, options_from_args(args))
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        print()
        return 0
    print_result(result)
    return 0


def print_result(result: Any, file: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, width=160)
    t = Table(title=f"Findings — {result.model.id} {result.model.version}" if result.model else "Findings")
    for col in ("Finding", "Type", "Side", "Mean diam. (mm)", "Long x short (mm)", "Volume (mm³)", "Mean HU",
                "Categories", "Recommendation"):
        t.add_column(col, overflow="fold")
    for f in result.findings:
        cats = "\n".join(f"{c.system} {c.value}" for c in f.categories)
        recs = "\n".join(c.recommendation for c in f.categories if c.recommendation)
        t.add_row(
            f.id, f.type or f.label, f.side or "", _num(f.mean_diameter_mm),
            f"{_num(f.long_axis_mm)} x {_num(f.short_axis_mm)}", _num(f.volume_mm3, 0), _num(f.mean_hu, 0), cats, recs,
        )
    console.print(t)
    for c in result.study_categories:
        console.print(f"[bold]Study {c.system} {c.version}: {c.value}[/bold] — {c.recommendation}")
    for k, v in result.study_measurements.items():
        console.print(f"{k}: {v:.4g}")
    if result.protocol:
        conf = result.protocol.get("conformant")
        console.print(f"Protocol {result.protocol.get('id')}: {'conformant' if conf else 'NOT conformant' if conf is False else 'not checked'}")
    for w in result.warnings[:10]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if result.timings_s:
        console.print("Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items() if "." not in k))
        if "total.results" in result.timings_s:
            console.print(f"SEG + SR {'stored' if result.context.get('sent_to') else 'written'} after "
                          f"{result.timings_s['total.results']:.2f} s")


def _num(v: Any, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}"
