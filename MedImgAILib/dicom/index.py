"""A local study index: patients, studies, series and instances seen on disk or received, queryable.

SQLAlchemy, SQLite by default (a path), any database by URL. One engine per index and a session per
call, so an index may be shared by the listener's threads. SQLite runs in WAL mode with a busy
timeout, writes start with ``BEGIN IMMEDIATE`` (a deferred transaction that later wants to write can
fail at once under WAL instead of waiting), and writers inside one process take a lock as well.

The index holds PHI (patient ID and name, in the patient rows and in the stored metadata) because
later stages need it (prior matching, PACS queries). It is a local file; nothing from it is logged.
Table names start with ``dicom_`` so the index can share a database with the tracking store.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import DicomInputError, NoSeriesFoundError
from .metadata import SeriesMetadata, extract_metadata


class _Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class PatientRow(_Base):
    __tablename__ = "dicom_patient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: PatientID plus issuer; "" when the files carry none
    patient_key: Mapped[str] = mapped_column(String(200), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(16), default="")


class StudyRow(_Base):
    __tablename__ = "dicom_study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("dicom_patient.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(16), default="", index=True)  # ISO yyyy-mm-dd or ""
    study_time: Mapped[str] = mapped_column(String(32), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_description: Mapped[str] = mapped_column(String(200), default="")
    study_id: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SeriesRow(_Base):
    __tablename__ = "dicom_series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("dicom_study.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(200), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    #: SeriesMetadata.model_dump(mode="json") of the first instance added
    metadata_json: Mapped[dict] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class InstanceRow(_Base):
    __tablename__ = "dicom_instance"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("dicom_series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(4096))
    added: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# --- rows handed to callers (detached, plain) ----------------------------------------------------
@dataclass(frozen=True)
class Study:
    study_instance_uid: str
    patient_id: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    modalities: tuple[str, ...]
    number_of_series: int
    number_of_instances: int


@dataclass(frozen=True)
class Series:
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    sop_class_uid: str
    number_of_instances: int


@dataclass(frozen=True)
class Instance:
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    number_of_frames: int
    transfer_syntax_uid: str
    path: str


def _s(ds: Any, kw: str, limit: int = 200) -> str:
    try:
        v = ds.get(kw)
    except Exception:  # noqa: BLE001 - an unparsable value counts as absent
        return ""
    return "" if v is None else str(v).strip()[:limit]


def _i(ds: Any, kw: str) -> int | None:
    try:
        v = ds.get(kw)
        return None if v in (None, "") else int(v)
    except (TypeError, ValueError):
        return None


def _url(url_or_path: str | os.PathLike) -> str:
    s = str(url_or_path)
    if "://" in s:
        return s
    p = Path(s).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


class StudyIndex:
    """Patients / studies / series / instances, idempotent on SOP Instance UID, safe across threads."""

    #: study filter name -> column (values compare equal; a value with * or ? matches as a wildcard)
    _STUDY_FILTERS = {
        "patient_id": PatientRow.patient_id,
        "study_date": StudyRow.study_date,
        "accession_number": StudyRow.accession_number,
        "study_description": StudyRow.study_description,
        "study_instance_uid": StudyRow.study_instance_uid,
    }
    _SERIES_FILTERS = {
        "modality": SeriesRow.modality,
        "series_description": SeriesRow.series_description,
        "body_part_examined": SeriesRow.body_part_examined,
        "series_number": SeriesRow.series_number,
        "sop_class_uid": SeriesRow.sop_class_uid,
        "series_instance_uid": SeriesRow.series_instance_uid,
    }

    def __init__(self, url_or_path: str | os.PathLike, *, echo: bool = False) -> None:
        self.url = _url(url_or_path)
        self._sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self._sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self._sqlite:
            self._sqlite_setup(self.engine)
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    @staticmethod
    def _sqlite_setup(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself
            cur = dbapi_conn.cursor()
            if not engine.url.database in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "StudyIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------
    def add_instance(self, path: str | os.PathLike, ds: Any) -> bool:
        """Record one instance (``ds`` may be header-only). True when new, False when already known."""
        return self.add_instances([(path, ds)]) == 1

    def add_instances(self, items: Iterable[tuple[str | os.PathLike, Any]]) -> int:
        """Record several instances in one transaction; returns how many were new."""
        items = list(items)
        for path, ds in items:
            for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
                if not _s(ds, kw):
                    raise DicomInputError(f"{os.path.basename(str(path))}: no {kw}; cannot index it")
        for attempt in range(5):
            try:
                with self._write_lock, self._sessions.begin() as session:
                    return sum(self._add(session, str(path), ds) for path, ds in items)
            except IntegrityError:
                # another process inserted the same patient/study/series between our read and write
                if attempt == 4:
                    raise
        return 0  # pragma: no cover

    def _add(self, session: Session, path: str, ds: Any) -> int:
        sop_uid = _s(ds, "SOPInstanceUID", 64)
        if session.scalar(select(InstanceRow.id).where(InstanceRow.sop_instance_uid == sop_uid)) is not None:
            return 0
        pid = _s(ds, "PatientID", 64)
        issuer = _s(ds, "IssuerOfPatientID", 64)
        pkey = f"{issuer}|{pid}"
        patient = session.scalar(select(PatientRow).where(PatientRow.patient_key == pkey))
        if patient is None:
            patient = PatientRow(
                patient_key=pkey,
                patient_id=pid,
                patient_name=_s(ds, "PatientName"),
                patient_sex=_s(ds, "PatientSex", 16),
                patient_birth_date=_s(ds, "PatientBirthDate", 16),
            )
            session.add(patient)
            session.flush()
        st_uid = _s(ds, "StudyInstanceUID", 64)
        study = session.scalar(select(StudyRow).where(StudyRow.study_instance_uid == st_uid))
        meta: SeriesMetadata | None = None
        if study is None:
            meta = extract_metadata(ds)
            study = StudyRow(
                study_instance_uid=st_uid,
                patient_pk=patient.id,
                study_date=meta.study.study_date.value or "",
                study_time=_s(ds, "StudyTime", 32),
                accession_number=_s(ds, "AccessionNumber", 64),
                study_description=_s(ds, "StudyDescription"),
                study_id=_s(ds, "StudyID", 64),
            )
            session.add(study)
            session.flush()
        se_uid = _s(ds, "SeriesInstanceUID", 64)
        series = session.scalar(select(SeriesRow).where(SeriesRow.series_instance_uid == se_uid))
        if series is None:
            meta = meta or extract_metadata(ds)
            series = SeriesRow(
                series_instance_uid=se_uid,
                study_pk=study.id,
                modality=_s(ds, "Modality", 16),
                series_number=_i(ds, "SeriesNumber"),
                series_description=_s(ds, "SeriesDescription"),
                body_part_examined=_s(ds, "BodyPartExamined", 64).upper(),
                sop_class_uid=_s(ds, "SOPClassUID", 64),
                metadata_json=meta.model_dump(mode="json"),
            )
            session.add(series)
            session.flush()
        meta_ts = getattr(ds, "file_meta", None)
        session.add(
            InstanceRow(
                sop_instance_uid=sop_uid,
                series_pk=series.id,
                sop_class_uid=_s(ds, "SOPClassUID", 64),
                instance_number=_i(ds, "InstanceNumber"),
                number_of_frames=_i(ds, "NumberOfFrames") or 1,
                transfer_syntax_uid=_s(meta_ts, "TransferSyntaxUID", 64) if meta_ts is not None else "",
                path=str(Path(path).resolve()),
            )
        )
        session.flush()
        return 1

    def add_folder(self, path: str | os.PathLike) -> tuple[int, list[tuple[str, str]]]:
        """Index every DICOM file under ``path``; returns (new instances, [(file, why skipped)])."""
        import pydicom

        from .scan import iter_files

        added = 0
        skipped: list[tuple[str, str]] = []
        batch: list[tuple[str, Any]] = []
        for f in iter_files(path):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - any parse failure: not (usable) DICOM
                skipped.append((f, f"not readable as DICOM ({type(exc).__name__})"))
                continue
            if "DirectoryRecordSequence" in ds:
                skipped.append((f, "DICOMDIR"))
                continue
            if not all(_s(ds, kw) for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")):
                skipped.append((f, "missing SOP/Series/Study Instance UID"))
                continue
            batch.append((f, ds))
            if len(batch) >= 200:
                added += self.add_instances(batch)
                batch = []
        if batch:
            added += self.add_instances(batch)
        return added, skipped

    # --- queries ----------------------------------------------------------------------------------
    @staticmethod
    def _match(col: Any, value: Any) -> Any:
        if isinstance(value, (list, tuple, set)):
            return col.in_(list(value))
        if isinstance(value, str) and ("*" in value or "?" in value):
            return col.like(value.replace("%", r"\%").replace("_", r"\_").replace("*", "%").replace("?", "_"), escape="\\")
        return col == value

    def studies(self, **filters: Any) -> list[Study]:
        """Studies, newest first. Filters: patient_id, study_date (or study_date_from / study_date_to,
        ISO dates), accession_number, study_description, study_instance_uid, modality (in the study)."""
        q = select(StudyRow, PatientRow.patient_id).join(PatientRow, StudyRow.patient_pk == PatientRow.id)
        for k, v in filters.items():
            if v is None:
                continue
            if k in self._STUDY_FILTERS:
                q = q.where(self._match(self._STUDY_FILTERS[k], v))
            elif k == "study_date_from":
                q = q.where(StudyRow.study_date >= v)
            elif k == "study_date_to":
                q = q.where(StudyRow.study_date <= v)
            elif k == "modality":
                q = q.where(
                    StudyRow.id.in_(select(SeriesRow.study_pk).where(self._match(SeriesRow.modality, v)))
                )
            else:
                raise ValueError(f"unknown study filter {k!r}")
        q = q.order_by(StudyRow.study_date.desc(), StudyRow.study_time.desc(), StudyRow.id)
        with self._sessions() as session:
            rows = session.execute(q).all()
            out = []
            for st, pid in rows:
                counts = session.execute(
                    select(SeriesRow.modality, func.count(InstanceRow.id))
                    .join(InstanceRow, InstanceRow.series_pk == SeriesRow.id, isouter=True)
                    .where(SeriesRow.study_pk == st.id)
                    .group_by(SeriesRow.id)
                ).all()
                out.append(
                    Study(
                        study_instance_uid=st.study_instance_uid,
                        patient_id=pid,
                        study_date=st.study_date,
                        study_time=st.study_time,
                        accession_number=st.accession_number,
                        study_description=st.study_description,
                        modalities=tuple(sorted({m for m, _ in counts if m})),
                        number_of_series=len(counts),
                        number_of_instances=sum(n for _, n in counts),
                    )
                )
            return out

    def series(self, study_uid: str | None = None, **filters: Any) -> list[Series]:
        """Series of one study (or of all), by series number. Filters: modality, series_description,
        body_part_examined, series_number, sop_class_uid, series_instance_uid."""
        q = (
            select(SeriesRow, StudyRow.study_instance_uid, func.count(InstanceRow.id))
            .join(StudyRow, SeriesRow.study_pk == StudyRow.id)
            .join(InstanceRow, InstanceRow.series_pk == SeriesRow.id, isouter=True)
            .group_by(SeriesRow.id, StudyRow.study_instance_uid)
        )
        if study_uid is not None:
            q = q.where(StudyRow.study_instance_uid == study_uid)
        for k, v in filters.items():
            if v is None:
                continue
            if k not in self._SERIES_FILTERS:
                raise ValueError(f"unknown series filter {k!r}")
            q = q.where(self._match(self._SERIES_FILTERS[k], v))
        q = q.order_by(StudyRow.study_instance_uid, SeriesRow.series_number, SeriesRow.id)
        with self._sessions() as session:
            return [
                Series(
                    series_instance_uid=se.series_instance_uid,
                    study_instance_uid=st_uid,
                    modality=se.modality,
                    series_number=se.series_number,
                    series_description=se.series_description,
                    body_part_examined=se.body_part_examined,
                    sop_class_uid=se.sop_class_uid,
                    number_of_instances=n,
                )
                for se, st_uid, n in session.execute(q).all()
            ]

    def instances(self, series_uid: str) -> list[Instance]:
        """Instances of a series, by instance number (then insertion order)."""
        q = (
            select(InstanceRow)
            .join(SeriesRow, InstanceRow.series_pk == SeriesRow.id)
            .where(SeriesRow.series_instance_uid == series_uid)
            .order_by(InstanceRow.instance_number, InstanceRow.id)
        )
        with self._sessions() as session:
            return [
                Instance(
                    sop_instance_uid=r.sop_instance_uid,
                    series_instance_uid=series_uid,
                    sop_class_uid=r.sop_class_uid,
                    instance_number=r.instance_number,
                    number_of_frames=r.number_of_frames,
                    transfer_syntax_uid=r.transfer_syntax_uid,
                    path=r.path,
                )
                for r in session.scalars(q).all()
            ]

    def series_metadata(self, series_uid: str) -> SeriesMetadata:
        """The normalized metadata of a series, with number_of_instances as indexed now."""
        with self._sessions() as session:
            row = session.scalar(select(SeriesRow).where(SeriesRow.series_instance_uid == series_uid))
            if row is None:
                raise NoSeriesFoundError(f"series {series_uid} is not in the study index {self.url}")
            n = session.scalar(select(func.count(InstanceRow.id)).where(InstanceRow.series_pk == row.id)) or 0
            meta = SeriesMetadata.model_validate(row.metadata_json)
        series = meta.series.model_copy(
            update={"number_of_instances": meta.series.number_of_instances.model_copy(
                update={"value": n, "source": "derived: instances in the study index", "missing": False}
            )}
        )
        return meta.model_copy(update={"series": series})
