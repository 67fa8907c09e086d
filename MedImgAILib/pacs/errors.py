"""Errors of the PACS stage. Each names the AE (``AET@host:port``) a user must look at."""

from __future__ import annotations

from ..errors import PacsError

__all__ = [
    "PacsError",
    "PacsSettingsError",
    "PacsConnectionError",
    "AssociationRejectedError",
    "PacsTimeoutError",
    "PacsOperationError",
    "UnsafeUidError",
]


class PacsSettingsError(PacsError):
    kind = "pacs-settings"


class PacsConnectionError(PacsError):
    """No TCP connection (refused, unreachable, timed out) or the peer aborted."""

    kind = "pacs-connection"


class AssociationRejectedError(PacsError):
    kind = "pacs-rejected"


class PacsTimeoutError(PacsError):
    kind = "pacs-timeout"


class PacsOperationError(PacsError):
    """The peer answered with a failure status, or the operation ended incomplete."""

    kind = "pacs-operation"


class UnsafeUidError(PacsError):
    """A received UID is not a syntactically valid DICOM UID (and so never becomes a path)."""

    kind = "unsafe-uid"
