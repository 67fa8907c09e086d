"""``medimgai`` command line. Each command group lives in its own module with a ``register(sub)``
function; a command handler returns an exit code. A ``MedImgAIError`` becomes one line on stderr and
exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from ..errors import MedImgAIError

TYPE_CHECKING = False  # typing is not imported at run time (start-up of `pacs get`, see docs/pacs.md)
if TYPE_CHECKING:
    from typing import NoReturn, Sequence

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


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` gives (``$COLUMNS``, the terminal, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own, given the terminal width: argparse asks ``shutil`` for it each time it makes
    a formatter, which it does for every ``add_argument``, and importing ``shutil`` (with bz2, lzma
    and fnmatch) was ~5 ms of `pacs get`'s start-up here, in a module the command never uses."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _terminal_columns() - 2)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` with :class:`HelpFormatter` by default; sub-commands' parsers
    are of the same class (``add_subparsers`` makes them with the parent's class)."""

    def __init__(self, *args: object, formatter_class: type = HelpFormatter, **kwargs: object) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)  # type: ignore[arg-type]


def configure_logging(verbose: int = 0) -> None:
    """The command line's log output: WARNING, or INFO / DEBUG with -v / -vv (a no-op once set).
    :func:`main` calls it before a command runs, except for a command that declared
    ``logs_on_demand``: its path logs nothing (`pacs get`, whose start-up then does not import
    ``logging``: ~8 ms here), and it calls this itself before it takes a path that logs."""
    import logging

    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build_parser(only: str | None = None, action: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just the command module of that name (a command's
    start-up then does not import every other command's dependencies: ~0.1-0.5 s), and with
    ``action`` just that action's parser where the module lists its actions in ``ACTIONS``."""
    parser = ArgumentParser(prog="medimgai", description="MedImgAI: imaging AI in the radiology department")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # a known command's module is imported directly: listing the package (pkgutil) imports inspect
    names = [only] if only in COMMAND_ORDER and importlib.util.find_spec(f"{__name__}.{only}") else _command_modules()
    for name in [only] if only in names else names:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            if action is not None and action in getattr(module, "ACTIONS", ()):
                module.register(sub, only=action)
            else:
                module.register(sub)
    parser.commands = sub.choices  # type: ignore[attr-defined]  # command name -> its parser
    return parser


#: set by :func:`main` when the command that ran leaves nothing for the interpreter's teardown to do
#: (it declares so with ``set_defaults(exit_fast=True)``): :func:`run` then ends the process at once
_exit_fast = False


def main(argv: Sequence[str] | None = None) -> int:
    global _exit_fast
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    parser = build_parser(only=command, action=words[1] if len(words) > 1 else None)
    if command not in parser.commands:  # type: ignore[attr-defined]
        parser = build_parser()  # not a module's own name: the full parser (and its error message)
    args = parser.parse_args(argv)
    if args.verbose or not getattr(args, "logs_on_demand", False):
        configure_logging(args.verbose)
    try:
        code = int(args.func(args) or 0)
        _exit_fast = bool(getattr(args, "exit_fast", False))
        return code
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


def run() -> NoReturn:
    """The program's entry (``python -m MedImgAILib``, the ``medimgai`` script): :func:`main`, then
    exit. A command that declared ``exit_fast`` (its work is complete and durable when it returns:
    `pacs get`) ends the process with ``os._exit`` once its output is flushed, skipping the
    interpreter's teardown of every module and object (~20-30 ms here, a tenth of a whole
    retrieval). Tests that call :func:`main` in-process are unaffected."""
    code = main()
    if not _exit_fast:
        sys.exit(code)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()  # flush log handlers, as the teardown would
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # e.g. stdout closed by the reader: the teardown gives 120
            code = code or 120
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
