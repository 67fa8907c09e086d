"""What the Slicer panels show and send, as plain functions (no Qt, no MRML): query filters from the
PACS panel's fields, table rows for studies and the AI worklist, the models offered for a series, the
devices offered. The widget only copies these into its widgets.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from ..errors import MedImgAIError

DEVICES = ("auto", "cpu", "cuda", "mps")

STUDY_COLUMNS = ["Patient", "Patient ID", "Date", "Modalities", "Accession", "Description", "Series", "Images"]
WORKLIST_COLUMNS = ["Urgency", "Category", "Date", "Model", "Findings", "Status"]

_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")


class PanelInputError(MedImgAIError):
    kind = "input"


def study_filters(patient: str = "", date: str = "", modality: str = "", accession: str = "") -> dict[str, str]:
    """C-FIND filters for a study query. ``patient``: a name when it holds ``^``, ``*``, ``?``, a
    space or a comma (DICOM PN matching), otherwise an ID. ``date``: YYYYMMDD, a range
    YYYYMMDD-YYYYMMDD (either end open) or YYYY-MM-DD."""
    out: dict[str, str] = {}
    p = patient.strip()
    if p:
        if any(c in p for c in "^*? ,"):
            out["patient_name"] = p.replace(", ", "^").replace(",", "^").replace(" ", "^")
        else:
            out["patient_id"] = p
    d = date.strip()
    if d:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
            d = d.replace("-", "")
        if not _DATE.match(d) or d == "-":
            raise PanelInputError(f"study date {date!r}: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        out["study_date"] = d
    if modality.strip():
        out["modality"] = modality.strip().upper()
    if accession.strip():
        out["accession"] = accession.strip()
    return out


def study_rows(records: Iterable[dict[str, Any]]) -> list[list[str]]:
    """One row per study record from ``pacs.client.find(..., "study")`` (columns: STUDY_COLUMNS)."""
    rows = []
    for r in records:
        d = str(r.get("study_date", ""))
        rows.append([
            str(r.get("patient_name", "")).replace("^", " ").strip(),
            str(r.get("patient_id", "")),
            f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 else d,
            "/".join(r.get("modalities", []) or []),
            str(r.get("accession_number", "")),
            str(r.get("study_description", "")),
            str(r.get("n_series", "")),
            str(r.get("n_instances", "")),
        ])
    return rows


def worklist_rows(items: Iterable[dict[str, Any]]) -> list[list[str]]:
    """Rows of the AI worklist (``ResultStore.worklist()``, already most urgent first)."""
    return [
        [str(i.get("urgency", "")), i.get("study_category", "") or "-", i.get("study_date", ""), i.get("model", ""),
         str(i.get("n_findings", "")), i.get("status", "")]
        for i in items
    ]


def models_for_modality(modality: Optional[str], cards: Optional[list[Any]] = None) -> list[tuple[str, str]]:
    """(id, display name) of the model cards for ``modality`` (all cards when it is unknown)."""
    if cards is None:
        from ..models import list_cards  # type: ignore[attr-defined]

        cards = list_cards()
    m = (modality or "").upper()
    return [(c.id, f"{c.name} ({c.id} {c.version})") for c in cards if not m or c.modality.upper() == m]
