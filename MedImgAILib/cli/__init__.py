"""``medimgai`` command line. Each command group lives in its own module with a ``register(sub)``
function; a command handler returns an exit code. A ``MedImgAIError`` becomes one line on stderr and
exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..errors import MedImgAIError

#: command modules in the order their commands appear in ``--help``; any other module in this package
#: with a ``register(sub)`` function is added after them
COMMAND_ORDER = [
    "demo", "analyze", "series", "phantom", "pacs", "listen", "models", "infer", "train", "qc", "protocols",
    "rules", "hippodeep",
]


def _command_modules() -> list[str]:
    import pkgutil

    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medimgai", description="MedImgAI: imaging AI in the radiology department")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _command_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MedImgAIError as exc:
        print(f"medimgai: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medimgai: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
