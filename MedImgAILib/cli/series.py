"""``medimgai series-info PATH [--json]``: what series a folder holds, with geometry, value range,
warnings and normalized metadata.

The ``--json`` output is a contract other tools rely on (issue 2)::

    {"series": [{"series_instance_uid", "modality", "size": [nx, ny, nz], "spacing": [sx, sy, sz],
                 "origin": [x, y, z], "direction": [9 numbers, row-major, columns = i, j, k axes in LPS],
                 "stats": {"min", "max", "mean"}, "warnings": [...], "metadata": {...}}],
     "skipped": [{"series_instance_uid", "error"}], "skipped_files": [{"path", "reason"}]}

``skipped`` and ``skipped_files`` are additions that say what could not be used and why. A path with
no readable image series exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from ..errors import MedImgAIError, NoSeriesFoundError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "series-info",
        help="list the DICOM series under a folder with geometry, value range and metadata",
        description="Scan PATH (a folder tree or a file) for DICOM series and describe each one.",
    )
    p.add_argument("path", metavar="PATH", help="folder (searched recursively) or DICOM file")
    p.add_argument("--json", action="store_true", help="print the JSON contract instead of a table")
    p.add_argument("--series", metavar="UID", default=None, help="only this SeriesInstanceUID (or UID#part)")
    p.set_defaults(func=run)


def series_info(path: str, series_uid: str | None = None) -> dict[str, Any]:
    """The JSON document ``series-info --json`` prints (raises NoSeriesFoundError when none loads)."""
    from ..dicom.load import load_series
    from ..dicom.scan import scan_tree

    result = scan_tree(path)
    out: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for ref in result.series:
        if series_uid is not None and series_uid not in (ref.key, ref.series_instance_uid):
            continue
        if not ref.is_image:
            skipped.append({"series_instance_uid": ref.key, "error": f"not an image series ({ref.non_image_kind})"})
            continue
        try:
            vol = load_series(ref)
        except MedImgAIError as exc:
            skipped.append({"series_instance_uid": ref.key, "error": str(exc)})
            continue
        a = vol.array
        out.append(
            {
                "series_instance_uid": vol.series_instance_uid,
                "series_part": ref.part,
                "modality": vol.modality,
                "size": list(vol.shape_ijk),
                "spacing": list(vol.spacing),
                "origin": list(vol.origin),
                "direction": [float(x) for x in vol.direction.ravel()],
                "stats": {
                    "min": float(a.min()),
                    "max": float(a.max()),
                    "mean": float(a.mean(dtype=np.float64)),
                },
                "warnings": list(vol.warnings),
                "metadata": vol.metadata.public_dict() if vol.metadata is not None else {},
            }
        )
        del vol, a  # one volume in memory at a time
    if not out:
        why = "; ".join(f"{s['series_instance_uid']}: {s['error']}" for s in skipped[:3])
        n_files = len(result.skipped)
        if why:
            raise NoSeriesFoundError(f"no readable image series in {path} ({why})")
        if series_uid is not None:
            raise NoSeriesFoundError(f"series {series_uid} not found in {path}")
        raise NoSeriesFoundError(
            f"no DICOM series in {path}" + (f" ({n_files} file(s) skipped as not DICOM or unreadable)" if n_files else "")
        )
    return {
        "series": out,
        "skipped": skipped,
        "skipped_files": [{"path": p, "reason": r} for p, r in result.skipped],
    }


def run(args: argparse.Namespace) -> int:
    doc = series_info(args.path, args.series)
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=160)
    t = Table(title=f"DICOM series in {args.path}")
    for col in ("series", "mod", "size", "spacing mm", "origin LPS mm", "min / max / mean", "description"):
        t.add_column(col)
    for s in doc["series"]:
        uid = s["series_instance_uid"]
        if s.get("series_part"):
            uid += f"#{s['series_part']}"
        desc = s["metadata"].get("series", {}).get("series_description", {}).get("value") or ""
        st = s["stats"]
        t.add_row(
            "…" + uid[-24:] if len(uid) > 25 else uid,
            s["modality"],
            "x".join(str(n) for n in s["size"]),
            " ".join(f"{x:.3g}" for x in s["spacing"]),
            " ".join(f"{x:.1f}" for x in s["origin"]),
            f"{st['min']:.6g} / {st['max']:.6g} / {st['mean']:.4g}",
            str(desc),
        )
    console.print(t)
    for s in doc["series"]:
        for w in s["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    for s in doc["skipped"]:
        console.print(f"[red]not loaded:[/red] {s['series_instance_uid']}: {s['error']}", highlight=False)
    if doc["skipped_files"]:
        console.print(f"{len(doc['skipped_files'])} file(s) skipped (not DICOM, DICOMDIR or unreadable)")
    return 0
