"""``medimgai models list|show|fetch|evaluate``."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model cards: list, show, fetch weights, evaluate")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True

    lp = msub.add_parser("list", help="list the registered models")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    lp.set_defaults(func=_list)

    sp = msub.add_parser("show", help="print a model card (validated) as JSON")
    sp.add_argument("model_id")
    sp.set_defaults(func=_show)

    fp = msub.add_parser("fetch", help="download and verify a model's weights (into the cache)")
    fp.add_argument("model_id")
    fp.add_argument("--weights-dir", help="offline directory holding the weights file (checked, not downloaded)")
    fp.add_argument("--offline", action="store_true", help="never use the network")
    fp.set_defaults(func=_fetch)

    ep = msub.add_parser("evaluate", help="evaluate a model on a fresh synthetic phantom test set")
    ep.add_argument("model_id")
    ep.add_argument("--cases", type=int, default=12, help="number of phantom cases (default 12)")
    ep.add_argument("--seed", type=int, default=10_000, help="first phantom seed (training uses seeds < 10000)")
    ep.add_argument("--device", default="cpu")
    ep.add_argument("--weights", help="state_dict to evaluate instead of the card's weights")
    ep.add_argument("--json", dest="json_out", help="also write the per-case results here")
    ep.set_defaults(func=_evaluate)


def _list(args: argparse.Namespace) -> int:
    from ..models import list_cards

    cards = list_cards()
    if args.json:
        print(json.dumps([c.summary() for c in cards], indent=2))
        return 0
    for c in cards:
        s = c.summary()
        print(f"{s['id']:<24} {s['version']:<8} {s['task']:<13} {s['modality']:<3} {s['runner']:<12} {', '.join(s['labels'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..models import get_card

    print(json.dumps(get_card(args.model_id).model_dump(mode="json", by_alias=True), indent=2))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..models import get_card, resolve_weights

    card = get_card(args.model_id)
    if card.weights is None:
        print(f"{card.id}: no weights to fetch (runner {card.runner.kind})")
        return 0
    path = resolve_weights(card, weights_dir=args.weights_dir, offline=True if args.offline else None,
                           show_progress=sys.stderr.isatty())
    print(json.dumps({"id": card.id, "version": card.version, "path": str(path), "sha256": card.weights.sha256,
                      "size_bytes": card.weights.size_bytes}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..inference.evaluation import evaluate_model, format_report

    report = evaluate_model(args.model_id, cases=args.cases, first_seed=args.seed, device=args.device,
                            weights=args.weights, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0
