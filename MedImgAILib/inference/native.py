"""Registry of native networks (``nn.Module`` classes in MedImgAILib or a site package) and of custom
pipelines that let a native model own its whole preprocessing -> network -> postprocessing.

A card names a network by registered name or by ``"package.module:Class"``; other packages can add
theirs without touching this file through the ``medimgai.networks`` / ``medimgai.pipelines`` entry
point groups, or by calling :func:`register_network` / :func:`register_pipeline` at import time (and
naming their module in the card's ``settings.import``).

A pipeline is ``fn(volume, network, ctx) -> Prediction`` (see ``runners.RunContext``); it must return
outputs on the source grid, and should call ``ctx.report`` and ``ctx.check_cancelled``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from ..errors import ModelError

_NETWORKS: dict[str, Callable[..., Any]] = {}
_PIPELINES: dict[str, Callable[..., Any]] = {}
_BUILTINS_LOADED = False


def register_network(name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
    _NETWORKS[name] = factory
    return factory


def register_pipeline(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    _PIPELINES[name] = fn
    return fn


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    importlib.import_module(".nets", __package__)  # the project's own networks register themselves
    for group, table in (("medimgai.networks", _NETWORKS), ("medimgai.pipelines", _PIPELINES)):
        for ep in entry_points(group=group):
            table.setdefault(ep.name, ep.load())


def _import_dotted(ref: str) -> Any:
    mod, _, attr = ref.partition(":")
    if not attr:
        mod, _, attr = ref.rpartition(".")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {ref!r}: {exc}") from None
    return obj


def _resolve(ref: str, registry: dict[str, Callable[..., Any]], what: str) -> Callable[..., Any]:
    """A registered name, else a dotted ``module:attr`` / ``module.attr`` import."""
    _load_builtins()
    if ref in registry:
        return registry[ref]
    if ":" in ref or "." in ref:
        return _import_dotted(ref)
    raise ModelError(f"no {what} {ref!r} is registered (known: {', '.join(sorted(registry)) or 'none'})")


def resolve_network(ref: str) -> Callable[..., Any]:
    return _resolve(ref, _NETWORKS, "native network")


def resolve_pipeline(ref: str) -> Callable[..., Any]:
    return _resolve(ref, _PIPELINES, "pipeline")


def import_modules(names: list[str] | str | None) -> None:
    """Card ``settings.import``: modules whose import registers networks/pipelines."""
    if not names:
        return
    for name in [names] if isinstance(names, str) else names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ModelError(f"model card asks to import {name!r}, which fails: {exc}") from None
