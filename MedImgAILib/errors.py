"""The one exception hierarchy. Every message names what a user needs to act on (which series, which
slice, which tag, which AE title) and never contains PHI. The CLI prints ``str(error)`` on one line."""

from __future__ import annotations


class MedImgAIError(Exception):
    """Root of every error the library raises on purpose."""

    #: short machine-readable kind, used in JSON error records and CLI exit lines
    kind: str = "error"

    def __str__(self) -> str:  # one line, whatever the message held
        return " ".join(super().__str__().split())


# --- dicom / input -------------------------------------------------------------------------------
class DicomInputError(MedImgAIError):
    """A DICOM file or series cannot be used as it is."""

    kind = "dicom-input"


class NoSeriesFoundError(DicomInputError):
    kind = "no-series"


class MalformedDicomError(DicomInputError):
    kind = "malformed-dicom"


class MissingTagError(DicomInputError):
    kind = "missing-tag"


class MissingPixelDataError(DicomInputError):
    kind = "missing-pixel-data"


class GeometryError(DicomInputError):
    """Slices that do not form a volume: duplicates, mixed orientation/size, impossible geometry."""

    kind = "geometry"


# --- network --------------------------------------------------------------------------------------
class PacsError(MedImgAIError):
    kind = "pacs"


# --- models ---------------------------------------------------------------------------------------
class ModelError(MedImgAIError):
    kind = "model"


class WeightsError(ModelError):
    kind = "weights"


# --- content (protocols, rules, model cards) ------------------------------------------------------
class ContentError(MedImgAIError):
    """A YAML file under Resources/ (or a user's) does not satisfy its schema."""

    kind = "content"


class RuleError(MedImgAIError):
    kind = "rules"


class ExportError(MedImgAIError):
    kind = "export"


class ProtocolError(MedImgAIError):
    kind = "protocol"


class CancelledError(MedImgAIError):
    """Long work (retrieval, inference, cohort runs) was cancelled by the user."""

    kind = "cancelled"
