"""``medimgai phantom OUT_DIR ...``: write a synthetic chest-CT series with nodules and its truth.json."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import MedImgAIError


def _nodule(text: str) -> dict[str, Any]:
    """type,diameter_mm[,x,y,z] (LPS mm) -> NoduleSpec fields."""
    parts = [p.strip() for p in text.split(",")]
    types = {"solid": "solid", "part_solid": "part_solid", "part-solid": "part_solid", "partsolid": "part_solid",
             "ground_glass": "ground_glass", "ground-glass": "ground_glass", "ggo": "ground_glass", "gg": "ground_glass"}
    if len(parts) not in (2, 5) or parts[0].lower() not in types:
        raise argparse.ArgumentTypeError(
            f"--nodule {text!r}: expected TYPE,DIAMETER_MM[,X,Y,Z] with TYPE one of solid, part_solid, ground_glass"
        )
    try:
        nums = [float(p) for p in parts[1:]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nodule {text!r}: diameter and position must be numbers (mm)") from None
    out: dict[str, Any] = {"type": types[parts[0].lower()], "diameter_mm": nums[0]}
    if len(nums) == 4:
        out["center_lps_mm"] = tuple(nums[1:])
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write a synthetic chest-CT series with nodules of known type, size and position",
        description="Write a synthetic chest-CT series (CT Image Storage, one file per slice) with lungs, "
        "pulmonary vessels and nodules, plus truth.json (exact nodule geometry in LPS mm, volumes, the "
        "acquisition and the true noise SD). Same seed, same pixels.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--preset", choices=["ldct-screening", "routine-chest"], help="start from a protocol preset")
    p.add_argument("--slice-thickness", type=float, help="mm (default 1.25)")
    p.add_argument("--interval", type=float, help="reconstruction interval, mm (default = thickness)")
    p.add_argument("--spacing", type=float, help="pixel spacing, mm (default FOV/matrix)")
    p.add_argument("--fov", type=float, help="reconstruction field of view, mm (default 380)")
    p.add_argument("--matrix", type=int, help="rows = columns (default 512)")
    p.add_argument("--slices", type=int, help="number of slices (default: cover both lungs)")
    p.add_argument("--z-start", type=float, help="z of the first (most inferior) slice, LPS mm")
    p.add_argument("--noise", type=float, help="noise SD in HU (default derived from mA, kVp, thickness, kernel)")
    p.add_argument("--noise-correlation", type=float, help="noise correlation length, mm (0 = white)")
    p.add_argument("--kernel", choices=["soft", "standard", "sharp"])
    p.add_argument("--kernel-name", help="ConvolutionKernel header text (default: the manufacturer's name)")
    p.add_argument("--blur", type=float, help="in-plane PSF sigma, mm (default by kernel)")
    p.add_argument("--kvp", type=float)
    p.add_argument("--ma", type=float, help="tube current, mA")
    p.add_argument("--ctdivol", type=float, help="CTDIvol header value, mGy (default derived)")
    p.add_argument("--contrast", choices=["none", "venous", "arterial"])
    p.add_argument("--breathing", type=float, metavar="MM", help="breathing artefact: peak craniocaudal displacement, mm")
    p.add_argument("--manufacturer", help="e.g. 'GE MEDICAL SYSTEMS', SIEMENS, Philips, TOSHIBA")
    p.add_argument("--model-name", help="ManufacturerModelName")
    p.add_argument("--protocol-name")
    p.add_argument("--series-description")
    p.add_argument("--study-description")
    p.add_argument("--body-part")
    p.add_argument("--indication")
    p.add_argument("--age", type=int)
    p.add_argument("--sex", choices=["M", "F", "O"])
    p.add_argument("--series-number", type=int)
    p.add_argument("--no-table", action="store_true", help="leave out the patient table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nodules", type=int, help="number of random nodules (default 3)")
    g.add_argument("--nodule", type=_nodule, action="append", metavar="TYPE,DIAM[,X,Y,Z]",
                   help="one nodule: solid|part_solid|ground_glass, diameter mm, optional LPS centre (repeatable)")
    p.add_argument("--size-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="random nodule diameters, mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anatomy-seed", type=int, help="patient seed (default = --seed)")
    p.add_argument("--labels", action="store_true", help="also write nodule_labels.nii.gz (nodule ids)")
    p.add_argument("--header", action="append", default=[], metavar="KEYWORD=VALUE",
                   help="override a header attribute (e.g. CTDIvol=9.5, ConvolutionKernel=B80f); repeatable")
    p.add_argument("--omit", action="append", default=[], metavar="KEYWORD",
                   help="leave a header attribute out (e.g. CTDIvol), as a scanner that does not send it; repeatable")
    p.add_argument("--omit-slice", type=int, action="append", default=[], metavar="K",
                   help="render but do not write slice K (0 = most inferior): a series with a gap; repeatable")
    p.add_argument("--perifissural", type=float, metavar="FRACTION", help="fraction of random nodules on a fissure")
    p.add_argument("--juxtapleural", type=float, metavar="FRACTION", help="fraction of random nodules on the costal pleura")
    p.add_argument("--deterministic-uids", action="store_true", help="UIDs derived from the seeds")
    p.add_argument("--recon", action="append", default=[], metavar="THICKNESS[:KERNEL[:INTERVAL]]",
                   help="write a study with one series per reconstruction of the same scan (e.g. --recon 1.25:sharp "
                   "--recon 5:soft) into OUT_DIR/series-NNN; repeatable")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=handle)


def _spec_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from ..phantoms import PhantomSpec, PhantomSpecError, spec_from_preset

    acq: dict[str, Any] = {}
    for arg, field in [("slice_thickness", "slice_thickness_mm"), ("interval", "reconstruction_interval_mm"),
                       ("spacing", "pixel_spacing_mm"), ("fov", "fov_mm"), ("matrix", "matrix"), ("slices", "slices"),
                       ("z_start", "z_start_mm"), ("noise", "noise_sd_hu"), ("noise_correlation", "noise_correlation_mm"),
                       ("kernel", "kernel"), ("kernel_name", "kernel_name"), ("blur", "blur_sigma_mm"), ("kvp", "kvp"),
                       ("ma", "tube_current_ma"), ("ctdivol", "ctdi_vol_mgy"), ("contrast", "contrast"),
                       ("breathing", "breathing_motion_mm"),
                       ("manufacturer", "manufacturer"), ("model_name", "model_name")]:
        v = getattr(args, arg)
        if v is not None:
            acq[field] = v
    if args.no_table:
        acq["table"] = False
    study: dict[str, Any] = {}
    for arg, field in [("protocol_name", "protocol_name"), ("series_description", "series_description"),
                       ("study_description", "study_description"), ("body_part", "body_part"),
                       ("indication", "indication"), ("age", "patient_age_years"), ("sex", "patient_sex"),
                       ("series_number", "series_number")]:
        v = getattr(args, arg)
        if v is not None:
            study[field] = v
    overrides: dict[str, Any] = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            raise PhantomSpecError(f"--header {item!r}: expected KEYWORD=VALUE")
        try:
            overrides[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            overrides[key.strip()] = value
    for key in args.omit:
        overrides[key.strip()] = None
    top: dict[str, Any] = {"seed": args.seed, "deterministic_uids": args.deterministic_uids,
                           "header_overrides": overrides, "omit_slices": args.omit_slice}
    if args.anatomy_seed is not None:
        top["anatomy_seed"] = args.anatomy_seed
    if args.nodule:
        top["nodules"] = args.nodule
    else:
        rn: dict[str, Any] = {"count": 3 if args.nodules is None else args.nodules}
        if args.size_range:
            rn["diameter_range_mm"] = tuple(args.size_range)
        if args.perifissural is not None:
            rn["perifissural_fraction"] = args.perifissural
        if args.juxtapleural is not None:
            rn["juxtapleural_fraction"] = args.juxtapleural
        top["random_nodules"] = rn
    try:
        if args.preset:
            return spec_from_preset(args.preset, acquisition=acq, study=study, **top)
        return PhantomSpec.model_validate({**top, "acquisition": acq, "study": study})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise PhantomSpecError(f"invalid phantom parameter{' ' + where if where else ''}: {first['msg']}") from None


def _recons(items: list[str]) -> list[dict[str, Any]]:
    from ..phantoms import PhantomSpecError

    out = []
    for item in items:
        thick, _, rest = item.partition(":")
        kernel, _, interval = rest.partition(":")
        try:
            rec: dict[str, Any] = {"slice_thickness_mm": float(thick),
                                   "reconstruction_interval_mm": float(interval) if interval else None}
        except ValueError:
            raise PhantomSpecError(f"--recon {item!r}: expected THICKNESS[:KERNEL[:INTERVAL]], e.g. 1.25:sharp:1.0") from None
        if kernel:
            if kernel not in ("soft", "standard", "sharp"):
                raise PhantomSpecError(f"--recon {item!r}: kernel must be soft, standard or sharp")
            rec["kernel"] = kernel
        out.append(rec)
    return out


def handle(args: argparse.Namespace) -> int:
    from ..phantoms import write_phantom_series, write_study

    spec = _spec_from_args(args)
    try:
        if args.recon:
            cases = write_study(spec, args.out_dir, _recons(args.recon))
        else:
            cases = [write_phantom_series(spec, args.out_dir, keep_volume=False, labels_nifti=args.labels)]
    except OSError as exc:
        raise MedImgAIError(f"cannot write the phantom series to {args.out_dir}: {exc.strerror or exc}") from None
    summaries = [_summary(case) for case in cases]
    if args.json:
        print(json.dumps(summaries[0] if not args.recon else {"series": summaries}, indent=2))
        return 0
    for summary in summaries:
        _print(summary)
    return 0


def _summary(case) -> dict[str, Any]:
    t = case.truth
    return {
        "out_dir": str(case.out_dir),
        "study_instance_uid": t["study_instance_uid"],
        "series_instance_uid": t["series_instance_uid"],
        "series_description": t["series_description"],
        "size": t["geometry"]["size"],
        "spacing": t["geometry"]["spacing"],
        "origin": t["geometry"]["origin"],
        "slice_thickness_mm": t["geometry"]["slice_thickness_mm"],
        "noise_sd_hu": t["noise_sd_hu"],
        "ctdi_vol_mgy": t["acquisition"]["ctdi_vol_mgy_header"],
        "convolution_kernel": t["acquisition"]["convolution_kernel_header"],
        "files": len(t["files"]),
        "truth": str(case.out_dir / "truth.json"),
        "seconds": t["generation_seconds"],
        "nodules": [
            {k: n[k] for k in ("id", "type", "diameter_mm", "center_lps_mm", "volume_mm3", "side", "lobe", "juxtapleural")}
            for n in t["nodules"]
        ],
    }


def _print(summary: dict[str, Any]) -> None:
    nx, ny, nz = summary["size"]
    sx, sy, sz = summary["spacing"]
    print(f"series {summary['series_instance_uid']}  ({summary['series_description']})")
    ctdi = summary["ctdi_vol_mgy"]
    print(f"  {nx}x{ny}x{nz} voxels, {sx:.3f}x{sy:.3f} mm pixels, {sz:g} mm interval, "
          f"{summary['slice_thickness_mm']:g} mm slices, kernel {summary['convolution_kernel']}, "
          f"noise SD {summary['noise_sd_hu']:.1f} HU, CTDIvol "
          + ("(omitted)" if ctdi is None else f"{float(ctdi):.2f} mGy"))
    print(f"  {summary['files']} files in {summary['out_dir']} ({summary['seconds']:.1f} s); truth: {summary['truth']}")
    for n in summary["nodules"]:
        c = ", ".join(f"{v:.1f}" for v in n["center_lps_mm"])
        jp = " juxtapleural" if n["juxtapleural"] else ""
        print(f"  nodule {n['id']}: {n['type']:<12} {n['diameter_mm']:5.1f} mm at ({c}) {n['lobe']}{jp}, "
              f"{n['volume_mm3']:.0f} mm3")
