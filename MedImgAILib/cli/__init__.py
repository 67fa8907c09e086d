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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just the command module of that name (a command's
    start-up then does not import every other command's dependencies: ~0.1-0.5 s)."""
    parser = argparse.ArgumentParser(prog="medimgai", description="MedImgAI: imaging AI in the radiology department")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    names = _command_modules()
    for name in [only] if only in names else names:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    parser.commands = sub.choices  # type: ignore[attr-defined]  # command name -> its parser
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command)
    if command not in parser.commands:  # type: ignore[attr-defined]
        parser = build_parser()  # not a module's own name: the full parser (and its error message)
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
    except Exception as exc:  # a bug, not a user error: still one line, the traceback on request
        if args.verbose >= 2:
            raise
        print(f"medimgai: internal error ({type(exc).__name__}: {exc}); run with -vv for the traceback "
              "and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
