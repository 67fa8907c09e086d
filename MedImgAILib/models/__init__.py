"""Model cards (``Resources/models/*.yaml``), the registry that lists and validates them, and the
weights they point at (download, cache, sha256, offline directory)."""

from .card import CARD_SCHEMA, LabelSpec, ModelCard
from .registry import ModelNotFoundError, get_card, list_cards, load_card
from .weights import cache_dir, resolve_weights, sha256_file

__all__ = [
    "CARD_SCHEMA",
    "LabelSpec",
    "ModelCard",
    "ModelNotFoundError",
    "cache_dir",
    "get_card",
    "list_cards",
    "load_card",
    "resolve_weights",
    "sha256_file",
]
