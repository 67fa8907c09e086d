"""``medimgai listen``: the DICOM listener (Storage SCP + query/retrieve over its store).

Each study that goes quiet for ``--quiet-seconds`` is printed on stdout as one JSON line
``{"event": "study-complete", "study_uid": ..., "instances": N, "paths": [...]}`` (the hook later
pipeline stages use). Stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..pacs.errors import PacsSettingsError


def add_listener_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", metavar="FILE", help="PACS settings (the [listener] table gives defaults)")
    p.add_argument("--aet", help="our AE title (called AE the senders must use)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (0 = any free port, printed at start)")
    p.add_argument("--store", type=Path, help="store directory")
    p.add_argument("--allow", action="append", metavar="AET", help="calling AE allowed (repeatable; default anyone)")
    p.add_argument("--index", metavar="DB", help="metadata index (SQLite path or SQLAlchemy URL)")
    p.add_argument("--quiet-seconds", type=float, help="a study is complete after this long without new instances")
    p.add_argument("--min-free-mb", type=float, help="refuse instances (0xA700) below this much free disk")
    p.add_argument("--max-associations", type=int, help="concurrent associations accepted")
    p.add_argument("--move-dest", action="append", default=[], metavar="AET@HOST:PORT",
                   help="a C-MOVE destination (repeatable)")
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tls-ca", type=Path, help="CA that signs client certificates")
    p.add_argument("--tls-require-client-cert", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="receive studies over DICOM (Storage SCP) until SIGTERM")
    add_listener_args(p)
    g = p.add_argument_group("unattended analysis (each completed study is analysed and the results sent back)")
    g.add_argument("--analyze", action="store_true", help="run the pipeline on every completed study")
    g.add_argument("--results", type=Path, default=Path("results"), help="results folder (one sub-folder per study)")
    g.add_argument("--model", help="model card id (default: the card matching each series)")
    g.add_argument("--send-back", metavar="NODE", help="PACS node to store SEG/SR/key images to")
    g.add_argument("--result-store", metavar="DB", help="result store for the worklist and priors (SQLite path or URL)")
    g.add_argument("--device", help="cpu | cuda | mps")
    p.set_defaults(func=cmd_listen)


def open_index(spec: str):  # noqa: ANN201 - a StudyIndex
    try:
        from ..dicom.index import StudyIndex  # type: ignore[import-not-found]
    except ImportError as exc:
        raise PacsSettingsError("--index needs MedImgAILib.dicom.index (the metadata index), not in this build") from exc
    return StudyIndex(spec)


def cmd_listen(args: argparse.Namespace) -> int:
    from ..pacs.listener import Listener, ListenerConfig  # pynetdicom, pydantic: only when listening
    from ..pacs.settings import TlsSettings, load_settings
    from .pacs import quiet_pynetdicom

    quiet_pynetdicom(args)
    settings = load_settings(args.settings)
    tls = None
    if args.tls_cert:
        tls = TlsSettings(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca,
                          require_client_cert=args.tls_require_client_cert)
    moves = {}
    for spec in args.move_dest:
        node = settings.node(spec)
        moves[node.aet] = (node.host, node.port)
    for node in settings.nodes.values():  # configured nodes are known C-MOVE destinations too
        moves.setdefault(node.aet, (node.host, node.port))
    cfg = ListenerConfig.from_settings(
        settings.listener, aet=args.aet, host=args.host, port=args.port, store_dir=args.store,
        allow=args.allow, quiet_seconds=args.quiet_seconds, min_free_mb=args.min_free_mb,
        max_associations=args.max_associations, tls=tls or settings.listener.tls, move_destinations=moves,
    )
    index_spec = args.index or settings.listener.index
    index = open_index(index_spec) if index_spec else None

    analyzer = None
    if getattr(args, "analyze", False):  # `pacs serve` shares this command without the analysis options
        from ..pipeline import AnalysisOptions, StudyAnalyzer

        store = None
        if args.result_store:
            from ..tracking import ResultStore

            store = ResultStore(args.result_store)
        analyzer = StudyAnalyzer(args.results, AnalysisOptions(
            model_id=args.model, device=args.device, send_to=args.send_back, pacs_settings=settings, store=store))

    def complete(study_uid: str, paths: list[Path]) -> None:
        print(json.dumps({"event": "study-complete", "study_uid": study_uid, "instances": len(paths),
                          "paths": [str(p) for p in paths]}), flush=True)
        if analyzer is not None:
            analyzer(study_uid, paths)

    listener = Listener(cfg, index=index, on_study_complete=complete)
    listener.start()
    print(json.dumps({"event": "listening", "aet": cfg.aet, "host": cfg.host, "port": listener.port,
                      "store": str(listener.store.root)}), flush=True)
    try:
        listener.serve_until_signal()
    finally:
        if analyzer is not None:
            analyzer.close()
        print(json.dumps({"event": "stopped", "received": listener.received, "refused": listener.refused}), flush=True)
    return 0
