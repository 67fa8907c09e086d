"""``medimgai qc``, ``medimgai protocols list|show`` and ``medimgai protocol sweep``.

``qc`` exits 0 when the series conforms to its protocol, 1 when it does not (or no protocol matches),
2 on a user error (bad folder, unknown protocol), like a linter.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import MedImgAIError


def register(sub: argparse._SubParsersAction) -> None:
    qc = sub.add_parser("qc", help="protocol conformance and image quality of one series")
    qc.add_argument("series_dir", metavar="SERIES_DIR", help="folder holding one series (or one DICOM file)")
    qc.add_argument("--protocol", metavar="ID", help="check against this protocol instead of the best match")
    qc.add_argument("--series", metavar="UID", help="which series, when the folder holds several")
    qc.add_argument("--header-only", action="store_true", help="do not read pixels (image-quality checks not evaluated)")
    qc.add_argument("--require", metavar="FIELDS", default="",
                    help="comma-separated metadata fields a model needs (e.g. acquisition.convolution_kernel)")
    qc.add_argument("--library", metavar="DIR", help="protocol library folder (default: Resources/protocols)")
    qc.add_argument("--json", action="store_true", help="print the report as JSON")
    qc.set_defaults(func=_qc)

    protos = sub.add_parser("protocols", help="the imaging protocol library")
    psub = protos.add_subparsers(dest="protocols_command", metavar="SUBCOMMAND")
    psub.required = True
    pl = psub.add_parser("list", help="list the protocols")
    pl.add_argument("--library", metavar="DIR")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_list)
    ps = psub.add_parser("show", help="show one protocol's criteria, source and changelog")
    ps.add_argument("protocol_id", metavar="ID")
    ps.add_argument("--library", metavar="DIR")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=_show)

    proto = sub.add_parser("protocol", help="protocol what-if tools for physicists")
    prsub = proto.add_subparsers(dest="protocol_command", metavar="SUBCOMMAND")
    prsub.required = True
    sw = prsub.add_parser(
        "sweep", help="run a detector on phantom series per acquisition setting and report how it degrades"
    )
    sw.add_argument("--model", metavar="ID", required=True, help="detector model id (classical-threshold is built in)")
    sw.add_argument("--vary", metavar="NAME=V1,V2", action="append", default=[],
                    help="slice_thickness=MM,...  noise=HU,...  kernel=soft,standard,sharp (repeatable)")
    sw.add_argument("--kernel", metavar="NAME", action="append", default=[], help="reconstruction kernel(s) to add")
    sw.add_argument("--cases", type=int, default=5, metavar="N", help="phantom cases per setting (default 5)")
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--out", metavar="DIR", required=True, help="folder for sweep.csv, sweep.json and the PNG plots")
    sw.add_argument("--phantom", choices=["auto", "synthetic", "generator"], default="auto",
                    help="case source: the phantom generator (MedImgAILib.phantoms), the built-in synthetic "
                         "chest, or auto (generator when installed)")
    sw.add_argument("--cohort", metavar="DIR",
                    help="degrade a thin-slice cohort instead of generating phantoms: sub-folders each holding "
                         "one CT series and truth.json (phantom generator) or lesions.json; --cases limits it")
    sw.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    sw.set_defaults(func=_sweep)


def _library(args: argparse.Namespace):
    from ..protocols import ProtocolLibrary, default_library

    return ProtocolLibrary.load(args.library) if getattr(args, "library", None) else default_library()


# --------------------------------------------------------------------------------------------------
def _qc(args: argparse.Namespace) -> int:
    from ..protocols import check_series
    from ..protocols.seriesdir import find_series, load_series_volume

    lib = _library(args)
    series = find_series(args.series_dir, args.series)
    volume = None if args.header_only else load_series_volume(series)
    required = [f.strip() for f in args.require.split(",") if f.strip()]
    report = check_series(
        series.metadata,
        volume,
        args.protocol,
        library=lib,
        model_required_fields=required,
        slice_positions_mm=series.slice_positions_mm or None,
    )
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_report(report)
    return 0 if report.conformant else 1


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _print_report(report) -> None:
    print(f"series {report.series_instance_uid}")
    if report.protocol is None:
        for m in report.messages:
            print(f"  {m}")
    else:
        print(f"protocol {report.protocol.id} v{report.protocol.version} ({report.protocol.title})")
        print(f"  matched by {report.matched_by}: {'; '.join(report.match_evidence)}")
        print(f"  {'conformant' if report.conformant else 'NOT conformant'}")
        w = max(len(c.name) for c in report.checks)
        for c in report.checks:
            print(f"  {c.status:13s} {c.name:{w}s}  actual {_fmt(c.actual):>10s}  expected {c.expected}"
                  f"{'  [' + c.level + ']' if c.level != 'required' else ''}")
        for m in report.messages:
            print(f"  note: {m}")
    mc = report.metadata_completeness
    print(f"metadata: {len(mc.present)}/{len(mc.required)} required fields present"
          + (f"; missing: {', '.join(mc.missing)}" if mc.missing else ""))
    iq = report.image_quality
    if iq:
        keys = [k for k in ("noise_sd_hu", "noise_air_sd_hu", "air_hu", "soft_tissue_hu", "lungs_fully_covered",
                            "slice_spacing_median_mm", "slice_spacing_regular", "snr") if k in iq]
        print("image quality: " + ", ".join(f"{k}={_fmt(iq[k])}" for k in keys))
        for n in iq.get("notes", []):
            print(f"  note: {n}")


def _list(args: argparse.Namespace) -> int:
    lib = _library(args)
    rows = [p.summary() for p in lib]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    w = max(len(r["id"]) for r in rows)
    for r in rows:
        print(f"{r['id']:{w}s}  v{r['version']:7s} {r['modality']:3s} effective {r['effective']}  {r['title']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    p = _library(args).get(args.protocol_id)
    if args.json:
        json.dump(p.model_dump(mode="json", exclude_none=True), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{p.id} v{p.version}: {p.title}")
    print(f"  modality {p.modality}, region {p.body_region}, effective {p.effective}, owner {p.owner}")
    for s in p.source:
        print(f"  source: {s.citation}" + (f" <{s.url}>" if s.url else ""))
    m = p.match
    print(f"  match: modality {m.modality}, body part {m.body_part}, patterns {m.description_patterns}, "
          f"codes {m.procedure_codes}, excludes {m.exclude_patterns}")
    print("  criteria:")
    for c in p.criteria:
        print(f"    {c.name:24s} {c.level:11s} {c.field:40s} {c.expected_text()}")
    if p.metadata_required:
        print(f"  metadata required: {', '.join(p.metadata_required)}")
    print("  changelog:")
    for e in p.changelog:
        print(f"    {e.version} {e.date} {e.author}: {e.change}")
    return 0


# --------------------------------------------------------------------------------------------------
def _case_factory(kind: str, seed: int):
    from ..protocols.sweep import PhantomGeneratorCases, SyntheticChestCases

    if kind in ("auto", "generator"):
        if PhantomGeneratorCases.available():
            return PhantomGeneratorCases(seed=seed), "MedImgAILib.phantoms (chest phantom generator)"
        if kind == "generator":
            raise MedImgAIError("the phantom generator (MedImgAILib.phantoms) is not installed; use --phantom synthetic")
    return SyntheticChestCases(seed=seed), "synthetic chest (protocols.sweep.SyntheticChestCases)"


def _sweep(args: argparse.Namespace) -> int:
    from ..protocols.sweep import parse_vary, resolve_detector, run_sweep, settings_grid, write_sweep_outputs

    vary = parse_vary(args.vary, args.kernel)
    if not vary:
        raise MedImgAIError("give at least one --vary NAME=V1,V2 (slice_thickness, noise, kernel)")
    detector = resolve_detector(args.model)
    if args.cohort:
        from ..protocols.sweep import CohortCases

        factory = CohortCases(args.cohort, limit=args.cases)
        source = f"cohort {args.cohort} ({len(factory)} cases, degraded)"
        args.cases = min(args.cases, len(factory))
    else:
        factory, source = _case_factory(args.phantom, args.seed)
    grid = settings_grid(vary)

    def progress(done: int, total: int, label: str) -> None:
        print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)

    result = run_sweep(grid, args.cases, factory, detector, model_id=args.model, case_source=source,
                       varied=vary, progress=progress)
    paths = write_sweep_outputs(result, args.out)
    if args.json:
        json.dump(result.to_json()["settings"], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{'thick':>6s} {'noise':>6s} {'kernel':8s} {'sens':>6s} {'FP/scan':>8s} {'|vol err| %':>12s} {'|diam err| mm':>14s}")
        for r in result.settings:
            print(f"{r['slice_thickness_mm']:6g} {r['noise_hu']:6g} {r['kernel']:8s} {_fmt(r['sensitivity']):>6s} "
                  f"{_fmt(r['fp_per_scan']):>8s} {_fmt(r['volume_error_pct_mean_abs']):>12s} "
                  f"{_fmt(r['diameter_error_mm_mean_abs']):>14s}")
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
