"""The model registry: every ``*.yaml`` card under ``Resources/models`` (or ``MEDIMGAI_RESOURCES``),
plus any extra directories a site adds (``MEDIMGAI_MODELS_PATH``, ``os.pathsep``-separated)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import yaml
from pydantic import ValidationError

from ..errors import ContentError, ModelError
from ..fileio import parse_yaml
from ..resources import resource_path
from .card import ModelCard


class ModelNotFoundError(ModelError):
    kind = "model-not-found"


def card_dirs() -> list[Path]:
    dirs = [resource_path("models")]
    extra = os.environ.get("MEDIMGAI_MODELS_PATH", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(card)"
        parts.append(f"{loc}: {err['msg']}")
    return f"model card {path}: " + "; ".join(parts)


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate one card; errors name the file and the field."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"model card {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ContentError(f"model card {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ContentError(f"model card {path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        raise ContentError(_format_validation_error(path, exc)) from None
    card._path = path.resolve()
    return card


def iter_card_files(dirs: Iterable[Path] | None = None) -> list[Path]:
    files: list[Path] = []
    for d in dirs if dirs is not None else card_dirs():
        if d.is_dir():
            files += sorted(p for p in d.glob("*.yaml") if not p.name.startswith("."))
    return files


def list_cards(dirs: Iterable[Path] | None = None) -> list[ModelCard]:
    """All cards, validated; a broken card is an error (a registry that hides a typo is worse)."""
    cards: dict[str, ModelCard] = {}
    for f in iter_card_files(dirs):
        card = load_card(f)
        if card.id in cards:
            raise ContentError(f"model id {card.id!r} is defined twice: {cards[card.id].path} and {f}")
        cards[card.id] = card
    return list(cards.values())


def get_card(model_id: str, dirs: Iterable[Path] | None = None) -> ModelCard:
    """A card by id, or by path to a YAML file."""
    if model_id.endswith((".yaml", ".yml")) and Path(model_id).is_file():
        return load_card(model_id)
    for f in iter_card_files(dirs):
        # cheap pre-check by file stem, but the id inside the file is what counts
        card = load_card(f)
        if card.id == model_id:
            return card
    known = ", ".join(sorted(c.id for c in list_cards(dirs))) or "none"
    raise ModelNotFoundError(f"no model card with id {model_id!r} (known: {known})")
