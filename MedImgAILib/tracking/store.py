"""ResultStore: results, corrections, the worklist (most urgent first) and priors for a patient.

Patients are keyed by a salted SHA-256 of the Patient ID, never the ID itself, so the store can be
copied to a researcher without carrying PHI while priors still match."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import Float, ForeignKey, Integer, String, Text, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..results import AnalysisResult, Category

#: most urgent first; a category not listed ranks after all listed ones
_URGENCY = {
    ("Lung-RADS", "4X"): 100, ("Lung-RADS", "4B"): 90, ("Lung-RADS", "4A"): 80, ("Lung-RADS", "3"): 60,
    ("Lung-RADS", "0"): 50, ("Lung-RADS", "2"): 20, ("Lung-RADS", "1"): 10,
}


def urgency_rank(categories: Iterable[Category]) -> int:
    """Higher is more urgent. Fleischner ranks by its follow-up interval (sooner = more urgent)."""
    best = 0
    for c in categories:
        rank = _URGENCY.get((c.system, c.value.upper()), 0)
        if not rank and c.system == "Fleischner" and c.follow_up_months is not None:
            rank = int(max(1, 75 - c.follow_up_months))  # 3 months -> 72 ... 24 months -> 51
        best = max(best, rank)
    return best


def patient_key(patient_id: str, salt: Optional[str] = None) -> str:
    salt = salt if salt is not None else os.environ.get("MEDIMGAI_PATIENT_SALT", "medimgai")
    return hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()


class _Base(DeclarativeBase):
    pass


class ResultRow(_Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_key: Mapped[str] = mapped_column(String(64), index=True, default="")
    study_date: Mapped[str] = mapped_column(String(10), default="")  # ISO
    site: Mapped[str] = mapped_column(String(128), default="")
    model_id: Mapped[str] = mapped_column(String(128), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    weights_sha256: Mapped[str] = mapped_column(String(64), default="")
    study_category: Mapped[str] = mapped_column(String(64), default="")
    urgency: Mapped[int] = mapped_column(Integer, default=0, index=True)
    n_findings: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="ai")  # ai | reviewed
    findings_path: Mapped[str] = mapped_column(Text, default="")
    result_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))


class CorrectionRow(_Base):
    __tablename__ = "corrections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    finding_id: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    dice: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    volume_change_pct: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    observer: Mapped[str] = mapped_column(String(128), default="")
    record_json: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[str] = mapped_column(String(32))


class ResultStore:
    def __init__(self, url_or_path: str | os.PathLike[str]) -> None:
        url = str(url_or_path)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{Path(url).resolve()}"
        self.engine = create_engine(url)
        if url.startswith("sqlite"):
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:  # concurrent listener threads
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()
        _Base.metadata.create_all(self.engine)

    def record_result(
        self,
        result: AnalysisResult,
        patient_id: str = "",
        study_date: str = "",
        site: str = "",
        findings_path: str = "",
    ) -> int:
        study_cat = next(iter(result.study_categories), None)
        row = ResultRow(
            study_instance_uid=result.study_instance_uid,
            series_instance_uid=result.series_instance_uid,
            patient_key=patient_key(patient_id) if patient_id else "",
            study_date=study_date,
            site=site,
            model_id=result.model.id if result.model else "",
            model_version=result.model.version if result.model else "",
            weights_sha256=result.model.weights_sha256 if result.model else "",
            study_category=f"{study_cat.system} {study_cat.value}" if study_cat else "",
            urgency=urgency_rank([*result.study_categories, *[c for f in result.findings for c in f.categories]]),
            n_findings=len(result.findings),
            findings_path=str(findings_path),
            result_json=json.dumps(result.to_json()),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return row.id

    def record_corrections(self, result_id: int, corrections: Iterable[Any]) -> int:
        n = 0
        with Session(self.engine) as s, s.begin():
            for c in corrections:
                data = c.model_dump(mode="json") if hasattr(c, "model_dump") else dict(c)
                s.add(CorrectionRow(
                    result_id=result_id, finding_id=data["finding_id"], action=data["action"],
                    dice=data.get("dice"), volume_change_pct=data.get("volume_change_pct"),
                    observer=data.get("observer", ""), record_json=json.dumps(data),
                    recorded_at=data.get("recorded_at") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                ))
                n += 1
            row = s.get(ResultRow, result_id)
            if row is not None:
                row.status = "reviewed"
        return n

    def worklist(self, status: Optional[str] = "ai", limit: int = 200) -> list[dict[str, Any]]:
        """Studies with AI results, most urgent first, then oldest first (first come, first read)."""
        q = select(ResultRow).order_by(ResultRow.urgency.desc(), ResultRow.created_at.asc()).limit(limit)
        if status:
            q = q.where(ResultRow.status == status)
        with Session(self.engine) as s:
            return [
                {"result_id": r.id, "study_instance_uid": r.study_instance_uid, "series_instance_uid": r.series_instance_uid,
                 "study_date": r.study_date, "model": f"{r.model_id} {r.model_version}", "study_category": r.study_category,
                 "urgency": r.urgency, "n_findings": r.n_findings, "status": r.status, "findings_path": r.findings_path}
                for r in s.scalars(q)
            ]

    def result(self, result_id: int) -> AnalysisResult:
        with Session(self.engine) as s:
            row = s.get(ResultRow, result_id)
            if row is None:
                raise KeyError(f"no result {result_id} in the store")
            return AnalysisResult.model_validate(json.loads(row.result_json))

    def priors(self, patient_id: str, before_date: str, model_id: Optional[str] = None) -> list[tuple[str, AnalysisResult]]:
        """Earlier results for the same patient, newest first, as (study date, result)."""
        key = patient_key(patient_id)
        q = select(ResultRow).where(ResultRow.patient_key == key, ResultRow.study_date < before_date)
        if model_id:
            q = q.where(ResultRow.model_id == model_id)
        q = q.order_by(ResultRow.study_date.desc(), ResultRow.id.desc())
        with Session(self.engine) as s:
            return [(r.study_date, AnalysisResult.model_validate(json.loads(r.result_json))) for r in s.scalars(q)]

    def corrections(self, result_id: Optional[int] = None) -> list[dict[str, Any]]:
        q = select(CorrectionRow)
        if result_id is not None:
            q = q.where(CorrectionRow.result_id == result_id)
        with Session(self.engine) as s:
            return [json.loads(r.record_json) | {"result_id": r.result_id} for r in s.scalars(q)]
