"""PACS connectivity over DICOM DIMSE: nodes and settings, SCU operations (echo, find, get/move,
store), the listener (Storage SCP + query/retrieve over its store, the embedded PACS). See docs/pacs.md.

The names below are imported on first use (PEP 562): `medimgai pacs get` needs only the lean
requestor (.retrieval, .dimse), and importing pynetdicom for it would cost ~0.4 s of start-up."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported at run time (start-up of `pacs get`, see docs/pacs.md)
if TYPE_CHECKING:
    from typing import Any

_WHERE = {
    "RetrieveResult": "retrieval", "StoreResult": "client", "echo": "client", "find": "client",
    "retrieve": "client", "store": "client",
    "Listener": "listener", "ListenerConfig": "listener", "move_into": "listener",
    "Node": "settings", "PacsSettings": "settings", "TlsSettings": "settings", "load_settings": "settings",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
