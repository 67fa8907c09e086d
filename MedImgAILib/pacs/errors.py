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
    "association_error",
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


def association_error(node: object, local_aet: str, exc: Exception) -> PacsError:
    """The PACS stage's error for an association the lean requestor (``dimse.connect``) could not
    establish: ``exc`` is its DimseError (``kind``: rejected, timeout, refused, unreachable, ...)."""
    kind, reason = getattr(exc, "kind", ""), getattr(exc, "reason", "")
    called = getattr(node, "aet", "")
    if kind == "rejected":
        if reason == "reason not received":
            return AssociationRejectedError(
                f"{node} ended the association request from calling AE {local_aet!r} to called AE "
                f"{called!r} without accepting it (rejected, reason not received): check the called AE "
                f"title and that {node} allows calling AE {local_aet!r}")
        return AssociationRejectedError(
            f"{node} rejected association from calling AE {local_aet!r} to called AE {called!r}: {reason}")
    if kind == "timeout":
        return PacsTimeoutError(str(exc))
    return PacsConnectionError(str(exc))
