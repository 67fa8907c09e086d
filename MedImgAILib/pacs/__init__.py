"""PACS connectivity over DICOM DIMSE: nodes and settings, SCU operations (echo, find, get/move,
store), the listener (Storage SCP + query/retrieve over its store, the embedded PACS). See docs/pacs.md."""

from .client import RetrieveResult, StoreResult, echo, find, retrieve, store
from .listener import Listener, ListenerConfig, move_into
from .settings import Node, PacsSettings, TlsSettings, load_settings

__all__ = [
    "Listener", "ListenerConfig", "Node", "PacsSettings", "RetrieveResult", "StoreResult", "TlsSettings",
    "echo", "find", "load_settings", "move_into", "retrieve", "store",
]
