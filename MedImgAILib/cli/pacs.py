"""``medimgai pacs echo|find|get|move|store|serve``: DICOM DIMSE against a PACS node.

NODE is a name from the settings file or inline ``AET@host:port``. ``--json`` prints one JSON object
(counts and seconds); without it a short human summary. Exit status: 0 done, 1 retrieval or send
incomplete (the store is partial: run the command again to complete it), 2 error.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from ..pacs.quicksettings import quick_settings
from . import configure_logging

TYPE_CHECKING = False  # typing is not imported at run time (start-up of `pacs get`, see docs/pacs.md)
if TYPE_CHECKING:
    from typing import Any

# The pynetdicom-based client is imported by the commands that use it, not here: `pacs get` runs on
# the lean requestor and its start-up must not pay for pynetdicom (~0.4 s). See docs/pacs.md.
LEVELS = ("patient", "study", "series", "image")  # = client.LEVELS (a unit test holds them equal)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", metavar="FILE", help="PACS settings (TOML/YAML); default $MEDIMGAI_PACS_SETTINGS "
                   "or ~/.config/medimgai/pacs.toml")
    p.add_argument("--aet", metavar="AET", help="our (calling) AE title; overrides the settings")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def quiet_pynetdicom(args: argparse.Namespace) -> None:
    """pynetdicom logs every refused connection and rejection at ERROR level; our error line says it
    once, naming the AE. Its own log comes back with -vv. (Setting a logger's level does not import
    pynetdicom.) Configures the command line's logging first, for a command that starts without it."""
    configure_logging(getattr(args, "verbose", 0))
    if getattr(args, "verbose", 0) < 2:
        import logging

        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def _settings(args: argparse.Namespace, quick: bool = False) -> Any:
    """The PACS settings (pydantic-validated, :class:`PacsSettings`). With ``quick`` and no settings
    file, the same defaults without importing pydantic (:mod:`MedImgAILib.pacs.quicksettings`); the
    caller then quiets pynetdicom if it takes a path that uses it."""
    if quick:
        q = quick_settings(args.settings, getattr(args, "aet", None))
        if q is not None:
            return q
    quiet_pynetdicom(args)
    from ..pacs.settings import load_settings

    s = load_settings(args.settings)
    if getattr(args, "aet", None):
        s = s.model_copy(update={"local_aet": args.aet})
    return s


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=None if args.json else 2) if args.json else text)


#: the actions of `medimgai pacs`; with one of them named, only its parser is built (cli.build_parser)
ACTIONS = ("echo", "find", "get", "move", "store", "serve")


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """The `pacs` command and its actions; with ``only`` (one of :data:`ACTIONS`) just that action's
    parser: building all six with argparse cost ~6 ms of `pacs get`'s start-up here."""
    p = sub.add_parser("pacs", help="query, retrieve from and send to a PACS (DICOM DIMSE)")
    ps = p.add_subparsers(dest="pacs_command", metavar="ACTION")
    ps.required = True
    for action in [only] if only in ACTIONS else ACTIONS:
        _ADD[action](ps)


def _add_echo(ps: argparse._SubParsersAction) -> None:
    e = ps.add_parser("echo", help="C-ECHO a node")
    e.add_argument("node")
    _common(e)
    e.set_defaults(func=cmd_echo)


def _add_find(ps: argparse._SubParsersAction) -> None:
    f = ps.add_parser("find", help="C-FIND studies/series/images/patients")
    f.add_argument("node")
    f.add_argument("--level", choices=LEVELS, default="study")
    for name in ("patient-id", "patient-name", "study-date", "accession", "modality", "description",
                 "study-uid", "series-uid", "sop-uid"):
        f.add_argument(f"--{name}", help="matching key (wildcards * ?; dates YYYYMMDD or A-B)")
    _common(f)
    f.set_defaults(func=cmd_find)


def _add_retrieve(ps: argparse._SubParsersAction, method: str) -> None:
    name = method
    g = ps.add_parser(name, help=f"retrieve a study (or series) with C-{name.upper()}")
    g.add_argument("node")
    g.add_argument("study_uid")
    g.add_argument("--series", action="append", default=[], metavar="UID", help="only this series (repeatable)")
    g.add_argument("--out", required=(method == "get"), type=Path, help="store directory (study/series/sop.dcm)")
    g.add_argument("--parallel", type=int, help="associations in parallel (default: the node's, 1)")
    if method == "move":
        g.add_argument("--dest", metavar="AET", help="C-MOVE destination the PACS knows (default: our AE; with "
                       "--out a temporary listener receives on --port)")
        g.add_argument("--port", type=int, default=None, help="port of the temporary listener (with --out)")
        g.add_argument("--host", default="127.0.0.1", help="address of the temporary listener")
    _common(g)
    # `get` returns only when every instance is durable (or the run failed), output printed: the
    # process may end without the interpreter's teardown (cli.run); its lean path logs nothing
    # (failures go into the result), so logging is set up only where it leaves that path
    g.set_defaults(func=cmd_retrieve, method=method, exit_fast=method == "get", logs_on_demand=method == "get")


def _add_store(ps: argparse._SubParsersAction) -> None:
    s = ps.add_parser("store", help="C-STORE files or directories")
    s.add_argument("node")
    s.add_argument("paths", nargs="+", metavar="FILES_OR_DIRS")
    _common(s)
    s.set_defaults(func=cmd_store)


def _add_serve(ps: argparse._SubParsersAction) -> None:
    v = ps.add_parser("serve", help="run the embedded PACS (query/retrieve + storage) until SIGTERM")
    from .listen import add_listener_args

    add_listener_args(v)
    v.set_defaults(func=_serve)


_ADD = {
    "echo": _add_echo, "find": _add_find, "get": lambda ps: _add_retrieve(ps, "get"),
    "move": lambda ps: _add_retrieve(ps, "move"), "store": _add_store, "serve": _add_serve,
}


def _serve(args: argparse.Namespace) -> int:
    from .listen import cmd_listen

    return cmd_listen(args)


def cmd_echo(args: argparse.Namespace) -> int:
    from ..pacs import client

    s = _settings(args)
    node = s.node(args.node)
    seconds = client.echo(node, s)
    _emit(args, {"node": str(node), "ok": True, "seconds": round(seconds, 4)}, f"{node}: echo ok ({seconds * 1000:.0f} ms)")
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from ..pacs import client

    s = _settings(args)
    node = s.node(args.node)
    filters = {k: getattr(args, k) for k in ("patient_id", "patient_name", "study_date", "accession", "modality",
                                             "description", "study_uid", "series_uid", "sop_uid")}
    records = client.find(node, s, args.level, **filters)
    if args.json:
        print(json.dumps({"node": str(node), "level": args.level, "count": len(records), "records": records}))
    else:
        for r in records:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
        print(f"{len(records)} {args.level} record(s)", file=sys.stderr)
    return 0


def _progress(args: argparse.Namespace):  # noqa: ANN202 - a callback or None
    if args.json or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(unit="img", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total or None
        bar.n = done
        bar.refresh()

    update.close = bar.close  # type: ignore[attr-defined]  # cmd_retrieve closes it (no teardown does: cli.run)
    return update


def cmd_retrieve(args: argparse.Namespace) -> int:
    s = _settings(args, quick=args.method == "get")
    node = s.node(args.node)
    lean = args.method == "get" and node.tls is None  # the lean requestor: no pynetdicom, nothing logged
    if not lean:
        quiet_pynetdicom(args)
    cancel = threading.Event()
    box: dict[str, Any] = {}
    progress = _progress(args)

    def run() -> None:
        try:
            if args.method == "move" and args.out is not None and not args.dest:
                from ..pacs.listener import move_into

                box["result"] = move_into(node, s, args.study_uid, args.out, series_uids=args.series,
                                          port=args.port, host=args.host, on_progress=progress, cancel=cancel)
            elif lean:
                from ..pacs import retrieval

                box["result"] = retrieval.get(
                    node, s, args.study_uid, args.out or Path("."), series_uids=args.series, parallel=args.parallel,
                    on_progress=progress, cancel=cancel,
                )
            else:
                from ..pacs import client

                box["result"] = client.retrieve(
                    node, s, args.study_uid, args.out or Path("."), series_uids=args.series, method=args.method,
                    move_destination=getattr(args, "dest", None) or s.local_aet, parallel=args.parallel,
                    on_progress=progress, cancel=cancel,
                )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="retrieve", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:  # Ctrl-C: C-CANCEL, then report what arrived
        cancel.set()
        worker.join()
    if progress is not None:
        progress.close()  # type: ignore[attr-defined]
    if "error" in box:
        raise box["error"]
    result = box["result"]
    obj = result.as_json()
    state = "complete" if result.complete else ("cancelled" if result.cancelled else "INCOMPLETE")
    _emit(args, obj, f"{state}: {result.received}/{result.expected} instances, {result.failed} failed, "
          f"{result.seconds:.1f} s -> {result.out_dir}" + "".join(f"\n  {e}" for e in result.errors))
    return 0 if result.complete else 1


def cmd_store(args: argparse.Namespace) -> int:
    from ..pacs import client

    s = _settings(args)
    node = s.node(args.node)
    result = client.store(node, s, args.paths)
    _emit(args, result.as_json(), f"sent {result.sent}, failed {result.failed}, skipped {result.skipped} (not DICOM), "
          f"{result.seconds:.1f} s" + "".join(f"\n  {e}" for e in result.errors[:10]))
    return 0 if result.failed == 0 else 1
