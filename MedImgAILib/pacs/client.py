"""DIMSE SCU operations on pynetdicom: C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE.

Every association sets TCP_NODELAY on its socket (measured here: without it each DIMSE round trip
waits ~40 ms for a delayed ACK) and asks for large PDUs (fewer, bigger P-DATA messages per image).
Failures become one-line errors naming the peer (``ORTHANC@127.0.0.1:4242``); no PHI is logged.
"""

from __future__ import annotations

import contextlib
import errno
import select
import logging
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from .errors import (
    AssociationRejectedError,
    PacsConnectionError,
    PacsOperationError,
    PacsTimeoutError,
)
from . import retrieval
from .settings import Node, PacsSettings
from .storage import InstanceStore, UnsafeUidError, uids_of

log = logging.getLogger(__name__)

#: storage SOP classes always proposed for retrieval and sending, and the transfer syntaxes we
#: accept for received instances (literal UIDs in .dimse, which must not import pynetdicom)
from .dimse import DEFAULT_STORAGE_CLASSES, RECEIVE_TRANSFER_SYNTAXES  # noqa: E402

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association

ProgressCallback = Callable[[int, int], None]  # (done, total) — total is 0 when unknown


# pynetdicom logs every request/response identifier at INFO: patient names and IDs. Never.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

#: C-GET without TLS runs on the lean requestor (retrieval, dimse); False = pynetdicom's own path
SYNC_GET = True

#: longest the DUL reactor waits in select() before checking its timers and kill flag
_REACTOR_WAIT_S = 0.05


class _Hold:
    """Lets one thread take an association's socket from its DUL reactor (see syncget.ReactorHold)."""

    def __init__(self, poke: Callable[[], None]) -> None:
        self.active = False
        self.held = threading.Event()
        self.resume = threading.Event()
        self.poke = poke


def _wake_on_data(dul: Any) -> None:
    """Make the association's DUL reactor wake as soon as there is work, instead of polling.

    pynetdicom's reactor polls: when a loop finds nothing to do it sleeps ``_run_loop_delay`` (1 ms,
    several ms on a loaded machine) and then checks the socket with a zero-timeout select. During a
    C-GET every image waits on that loop twice: for the incoming data and for our C-STORE response
    to leave (the peer sends nothing until it has it). Here the reactor blocks in select() on its
    socket *and* on a wake-up socketpair that is written whenever something is queued for it to send,
    so it reacts to either at once; the sleep is dropped."""
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    weakref.finalize(dul, wake_r.close)
    weakref.finalize(dul, wake_w.close)

    def poke() -> None:
        try:
            wake_w.send(b"\0")
        except OSError:  # buffer full (already poked) or closed: the reactor is awake or gone
            pass

    for q in (dul.to_provider_queue, dul.event_queue):
        put = q.put

        def put_and_wake(item: Any, block: bool = True, timeout: float | None = None, _put: Any = put) -> None:
            _put(item, block, timeout)
            poke()

        q.put = put_and_wake  # type: ignore[method-assign]

    original = dul._is_transport_event
    hold = _Hold(poke)
    dul._medimgai_hold = hold

    def is_transport_event() -> bool:
        if hold.active:  # another thread drives the socket (syncget.ReactorHold): stay off it
            hold.held.set()
            hold.resume.wait(_REACTOR_WAIT_S)
            dul._idle_timer.restart()  # the socket is in use, not idle
            return False
        sock = getattr(dul.socket, "socket", None)
        if sock is not None and dul.to_provider_queue.empty() and dul.event_queue.empty():
            try:
                select.select([sock, wake_r], [], [], _REACTOR_WAIT_S)
                try:
                    wake_r.recv(4096)
                except OSError:
                    pass
            except (OSError, ValueError):
                pass  # closed socket: the original check reports the transport event
        return original()

    dul._is_transport_event = is_transport_event
    dul._run_loop_delay = 0
    # a kill request (release/abort) must not wait for the select timeout either
    kill = dul.kill_dul

    def kill_and_wake() -> None:
        kill()
        poke()

    dul.kill_dul = kill_and_wake


def tune_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler for every association we make or accept: TCP_NODELAY on its socket
    (no ~40 ms delayed-ACK wait per DIMSE round trip) and a reactor that wakes on data."""
    try:
        dul = event.assoc.dul
        sock = dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _wake_on_data(dul)
    except (AttributeError, OSError) as exc:  # a socket already closed by the peer: nothing to tune
        log.debug("association socket not tuned: %s", exc)


set_nodelay = tune_association  # the name the design notes use


def set_nodelay_only(event: evt.Event) -> None:
    """TCP_NODELAY without the reactor change (the fallback when the tuned reactor lost a rejection)."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def make_ae(settings: PacsSettings) -> AE:
    ae = AE(ae_title=settings.local_aet)
    t = settings.timeouts
    ae.connection_timeout = t.connection
    ae.acse_timeout = t.acse
    ae.dimse_timeout = t.dimse
    ae.network_timeout = t.network
    ae.maximum_pdu_size = settings.max_pdu
    return ae


def _probe_reason(node: Node, timeout: float | None) -> str:
    """Why a TCP connection to ``node`` fails, in words (only called after an association failed)."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout or 5):
            return "the peer closed the connection or aborted the association"
    except socket.timeout:
        return "connection timed out"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return (exc.strerror or str(exc)).lower()


@contextlib.contextmanager
def associate(
    node: Node,
    settings: PacsSettings,
    contexts: Sequence[Any],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[tuple] = (),
    ae: AE | None = None,
) -> Iterator[Association]:
    """An established association with ``node``; released (or aborted on error) on exit."""
    ae = ae or make_ae(settings)
    ae.requested_contexts = list(contexts)[:MAX_CONTEXTS]
    tls_args = node.tls.client_context(node.host) if node.tls else None
    # Under load the tuned reactor (tune_association) can see the peer's close before the
    # A-ASSOCIATE-RJ sent just ahead of it, and reports an abort. The second attempt runs pynetdicom's
    # own reactor, which reads the rejection (and its reason) before the close.
    for attempt in (1, 2):
        tuning = [(evt.EVT_CONN_OPEN, tune_association)] if attempt == 1 else [(evt.EVT_CONN_OPEN, set_nodelay_only)]
        assoc = ae.associate(
            node.host,
            node.port,
            ae_title=node.aet,
            max_pdu=settings.max_pdu,
            ext_neg=list(roles) or None,
            evt_handlers=[*tuning, *handlers],
            tls_args=tls_args,
        )
        if assoc.is_established or assoc.is_rejected:
            break
        reason = _probe_reason(node, settings.timeouts.connection)
        if attempt == 2 or not reason.startswith("the peer closed"):
            break
        time.sleep(0.2)
    if not assoc.is_established:
        if assoc.is_rejected:
            prim = assoc.acceptor.primitive
            reason = getattr(prim, "reason_str", "unknown reason") if prim is not None else "unknown reason"
            raise AssociationRejectedError(
                f"{node} rejected association from calling AE {settings.local_aet!r} to called AE "
                f"{node.aet!r}: {reason}"
            )
        if reason.startswith("the peer closed"):
            # TCP works, yet the association was ended before it was accepted, twice: in practice a
            # rejection whose A-ASSOCIATE-RJ was not read. Say so, and what to check.
            raise AssociationRejectedError(
                f"{node} ended the association request from calling AE {settings.local_aet!r} to called AE "
                f"{node.aet!r} without accepting it (rejected, reason not received): check the called AE title "
                f"and that {node} allows calling AE {settings.local_aet!r}"
            )
        raise PacsConnectionError(f"cannot connect to {node}: {reason}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def echo(node: Node, settings: PacsSettings) -> float:
    """C-ECHO; returns the round-trip seconds (association included)."""
    t0 = time.perf_counter()
    with associate(node, settings, [build_context(sc.Verification)]) as assoc:
        status = assoc.send_c_echo()
        _require_success(node, "C-ECHO", status)
    return time.perf_counter() - t0


def _require_success(node: Node, op: str, status: Dataset) -> None:
    if "Status" not in status:
        raise PacsTimeoutError(f"{node} did not answer {op} (DIMSE timeout or association aborted)")
    if status.Status != 0x0000:
        raise PacsOperationError(f"{node} answered {op} with status 0x{status.Status:04X}")


# --- C-FIND ----------------------------------------------------------------------------------------
LEVELS = ("patient", "study", "series", "image")

#: return keys requested per level (empty = return this key)
_RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "patient": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    "study": (
        "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
        "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ModalitiesInStudy",
        "ReferringPhysicianName", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
        "SeriesDate", "BodyPartExamined", "NumberOfSeriesRelatedInstances",
    ),
    "image": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}

#: filter names (CLI / API) -> attribute keyword per level
_FILTERS: dict[str, dict[str, str]] = {
    "patient_id": {lv: "PatientID" for lv in LEVELS},
    "patient_name": {lv: "PatientName" for lv in LEVELS},
    "study_date": {"study": "StudyDate", "series": "StudyDate", "image": "StudyDate"},
    "accession": {"study": "AccessionNumber", "series": "AccessionNumber", "image": "AccessionNumber"},
    "modality": {"study": "ModalitiesInStudy", "series": "Modality", "image": "Modality"},
    "description": {"study": "StudyDescription", "series": "SeriesDescription"},
    "study_uid": {"study": "StudyInstanceUID", "series": "StudyInstanceUID", "image": "StudyInstanceUID"},
    "series_uid": {"series": "SeriesInstanceUID", "image": "SeriesInstanceUID"},
    "sop_uid": {"image": "SOPInstanceUID"},
}

#: normalized record field -> attribute keyword
_FIELDS: dict[str, str] = {
    "patient_id": "PatientID", "patient_name": "PatientName", "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex", "study_uid": "StudyInstanceUID", "study_date": "StudyDate",
    "study_time": "StudyTime", "accession_number": "AccessionNumber", "study_id": "StudyID",
    "study_description": "StudyDescription", "referring_physician": "ReferringPhysicianName",
    "series_uid": "SeriesInstanceUID", "modality": "Modality", "series_number": "SeriesNumber",
    "series_description": "SeriesDescription", "series_date": "SeriesDate", "body_part": "BodyPartExamined",
    "sop_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID", "instance_number": "InstanceNumber",
}
_COUNTS = {
    "n_studies": "NumberOfPatientRelatedStudies", "n_series": "NumberOfStudyRelatedSeries",
    "n_instances": ("NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances"),
}
_UNIQUE = {"patient": "patient_id", "study": "study_uid", "series": "series_uid", "image": "sop_uid"}
#: fields that belong to a level's record (a PACS answering a study query per instance leaks the rest)
_BELOW = {
    "patient": {"study_uid", "study_date", "study_time", "accession_number", "study_id", "study_description",
                "referring_physician", "series_uid", "modality", "series_number", "series_description",
                "series_date", "body_part", "sop_uid", "sop_class_uid", "instance_number"},
    "study": {"series_uid", "modality", "series_number", "series_description", "series_date", "body_part",
              "sop_uid", "sop_class_uid", "instance_number"},
    "series": {"sop_uid", "sop_class_uid", "instance_number"},
    "image": set(),
}


def build_query(level: str, filters: dict[str, str | None]) -> Dataset:
    if level not in LEVELS:
        raise PacsOperationError(f"query level {level!r}: use one of {', '.join(LEVELS)}")
    ds = Dataset()
    ds.QueryRetrieveLevel = {"image": "IMAGE"}.get(level, level.upper())
    for kw in _RETURN_KEYS[level]:
        setattr(ds, kw, "")
    for name, value in filters.items():
        if value in (None, ""):
            continue
        kw = _FILTERS.get(name, {}).get(level)
        if kw is None:
            raise PacsOperationError(f"filter {name!r} does not apply at {level} level")
        setattr(ds, kw, value)
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def normalize(level: str, rows: Iterable[Dataset]) -> list[dict[str, Any]]:
    """One record per unique key of the level (some PACS return one row per instance): text fields
    take the first non-empty value, modalities are unioned, counts are the largest reported or the
    number of distinct instances seen, whichever is larger."""
    merged: dict[str, dict[str, Any]] = {}
    sops: dict[str, set[str]] = {}
    for ds in rows:
        rec: dict[str, Any] = {}
        for name, kw in _FIELDS.items():
            if kw in ds and _text(ds.get(kw)):
                rec[name] = _text(ds.get(kw))
        mods = set()
        for kw in ("ModalitiesInStudy", "Modality"):
            if kw in ds and ds.get(kw):
                v = ds.get(kw)
                mods.update([str(x) for x in v] if not isinstance(v, str) else [x for x in v.split("\\") if x])
        for name, kws in _COUNTS.items():
            for kw in (kws,) if isinstance(kws, str) else kws:
                if kw in ds and str(ds.get(kw)).strip():
                    with contextlib.suppress(ValueError, TypeError):
                        rec[name] = int(str(ds.get(kw)).strip())
        key = rec.get(_UNIQUE[level])
        if not key:
            continue
        sop = rec.get("sop_uid")
        for name in _BELOW[level]:
            rec.pop(name, None)
        cur = merged.setdefault(key, {})
        for name, value in rec.items():
            if name.startswith("n_"):
                cur[name] = max(cur.get(name, 0), value)
            else:
                cur.setdefault(name, value)
        if level == "study":
            cur.setdefault("modalities", set()).update(mods)
        if sop:
            sops.setdefault(key, set()).add(sop)
    out = []
    for key, cur in merged.items():
        if "modalities" in cur:
            cur["modalities"] = sorted(cur["modalities"])
        if level != "image" and key in sops:
            cur["n_instances"] = max(cur.get("n_instances", 0), len(sops[key]))
        out.append(cur)
    out.sort(key=lambda r: (r.get("study_date", ""), r.get("series_number", ""), r.get(_UNIQUE[level], "")))
    for rec in out:  # numbers as numbers where the attribute is numeric
        for name in ("series_number", "instance_number"):
            if name in rec:
                with contextlib.suppress(ValueError):
                    rec[name] = int(float(rec[name]))
    return out


def find(node: Node, settings: PacsSettings, level: str, **filters: str | None) -> list[dict[str, Any]]:
    """C-FIND at ``level`` (patient root for patients, study root otherwise) -> normalized records."""
    query = build_query(level, filters)
    model = sc.PatientRootQueryRetrieveInformationModelFind if level == "patient" else (
        sc.StudyRootQueryRetrieveInformationModelFind
    )
    rows: list[Dataset] = []
    with associate(node, settings, [build_context(model)]) as assoc:
        final = None
        for status, identifier in assoc.send_c_find(query, model):
            if "Status" not in status:
                raise PacsTimeoutError(f"{node} stopped answering C-FIND (DIMSE timeout or association aborted)")
            cat = code_to_category(status.Status)
            if cat == "Pending" and identifier is not None:
                rows.append(identifier)
            else:
                final = status.Status
        if final not in (0x0000, None):
            raise PacsOperationError(f"{node} answered C-FIND ({level}) with status 0x{final:04X}")
    return normalize(level, rows)


# --- retrieval -------------------------------------------------------------------------------------
RetrieveResult = retrieval.RetrieveResult
_Progress = retrieval.Progress


def _store_encoded(
    store: InstanceStore, progress: _Progress, node: Node, encoded: bytes, transfer_syntax: str,
    uids: Dataset | None = None,
) -> int:
    """Write one received instance (Part 10 bytes) into the store; the C-STORE-RSP status. ``uids``:
    its naming UIDs when already parsed."""
    try:
        rec = store.put(uids if uids is not None else uids_of(encoded), encoded, transfer_syntax, catalog=False)
    except UnsafeUidError as exc:
        progress.failed_locally(str(exc))
        return 0xC210  # cannot understand
    except OSError as exc:
        progress.failed_locally(f"cannot write the file ({exc.strerror or exc})")
        return 0xA700
    except Exception as exc:  # noqa: BLE001 - an unparseable dataset is refused, never stored
        progress.failed_locally(f"unreadable dataset refused ({exc.__class__.__name__})")
        return 0xC210
    progress.stored(rec.sop_uid, rec.path)
    return 0x0000


def _store_handler(store: InstanceStore, progress: _Progress, node: Node) -> Callable[[evt.Event], int]:
    def handle(event: evt.Event) -> int:
        encoded = event.encoded_dataset(include_meta=True)
        return _store_encoded(store, progress, node, encoded, str(event.context.transfer_syntax))

    return handle


def _storage_contexts(classes: Iterable[str]) -> list[Any]:
    uniq = list(dict.fromkeys([*classes, *DEFAULT_STORAGE_CLASSES]))
    return [build_context(uid, list(RECEIVE_TRANSFER_SYNTAXES)) for uid in uniq[: MAX_CONTEXTS - 1]]


def _run_get(
    node: Node,
    settings: PacsSettings,
    identifier: Dataset,
    classes: Sequence[str],
    store: InstanceStore,
    progress: _Progress,
    cancel: threading.Event | None,
    method: str,
    move_destination: str,
) -> retrieval.Outcome:
    """One association: C-GET (sub-operations arrive on it) or C-MOVE (to ``move_destination``)."""
    out = retrieval.Outcome()
    if method == "get":
        model = sc.StudyRootQueryRetrieveInformationModelGet
        store_cx = _storage_contexts(classes)
        contexts = [build_context(model), *store_cx]
        roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in store_cx]
        handlers = [(evt.EVT_C_STORE, _store_handler(store, progress, node))]
    else:
        model = sc.StudyRootQueryRetrieveInformationModelMove
        contexts, roles, handlers = [build_context(model)], [], []
    try:
        with associate(node, settings, contexts, roles=roles, handlers=handlers) as assoc:
            cancel_sent = False
            last = time.monotonic()
            responses = (
                assoc.send_c_get(identifier, model, msg_id=1)
                if method == "get"
                else assoc.send_c_move(identifier, move_destination, model, msg_id=1)
            )
            for status, _ in responses:
                now = time.monotonic()
                if "Status" not in status:
                    # pynetdicom yields an empty status both when the DIMSE timeout expired (it then
                    # aborts) and when the peer aborted or closed: the silence before tells them apart.
                    timeout = settings.timeouts.dimse
                    if timeout is not None and now - last >= timeout * 0.9:
                        out.error = f"{node}: no DIMSE response within {timeout:g} s; association aborted"
                    else:
                        out.error = f"{node} aborted the association during C-{method.upper()}"
                    break
                last = now
                for kw, attr in (
                    ("NumberOfCompletedSuboperations", "completed"),
                    ("NumberOfFailedSuboperations", "failed"),
                    ("NumberOfWarningSuboperations", "warnings"),
                ):
                    if kw in status and status.get(kw) is not None:
                        setattr(out, attr, int(status.get(kw)))
                cat = code_to_category(status.Status)
                if method == "move" and progress.callback:  # C-MOVE progress: the PACS's own count
                    progress.callback(out.completed, progress.total)
                if cat == "Pending":
                    if cancel is not None and cancel.is_set() and not cancel_sent:
                        assoc.send_c_cancel(1, query_model=model)
                        cancel_sent = True
                    continue
                out.final_status = status.Status
                out.cancelled = cat == "Cancel"
            if cancel is not None and cancel.is_set():
                out.cancelled = True
    except (PacsConnectionError, AssociationRejectedError) as exc:
        out.error = str(exc)
    return out


def _study_summary(node: Node, settings: PacsSettings, study_uid: str) -> tuple[int | None, list[str]]:
    """(NumberOfStudyRelatedInstances, SOPClassesInStudy) from one STUDY-level C-FIND answer; count
    None when the PACS does not compute it or answers more than once for the UID (Orthanc does when
    two patients share a Study Instance UID; some PACS answer once per instance): the caller then lists
    the instances. One answer instead of one per instance: listing a 200-image study at IMAGE level
    cost ~0.3 s of CPU (pynetdicom decodes every answer)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.NumberOfStudyRelatedInstances = ""
    query.SOPClassesInStudy = ""
    model = sc.StudyRootQueryRetrieveInformationModelFind
    count: int | None = None
    classes: list[str] = []
    answers = 0
    with associate(node, settings, [build_context(model)]) as assoc:
        for status, identifier in assoc.send_c_find(query, model):
            if "Status" not in status:
                raise PacsTimeoutError(f"{node} stopped answering C-FIND (DIMSE timeout or association aborted)")
            if code_to_category(status.Status) != "Pending" or identifier is None:
                continue
            if str(identifier.get("StudyInstanceUID", "")) != study_uid:
                continue
            answers += 1
            try:
                value = identifier.get("NumberOfStudyRelatedInstances")
                if value not in (None, ""):
                    count = int(value)
            except (TypeError, ValueError):
                pass
            value = identifier.get("SOPClassesInStudy")
            if value:
                classes += [str(v) for v in (value if isinstance(value, (list, tuple)) or
                                               value.__class__.__name__ == "MultiValue" else [value])]
    if answers != 1:
        count = None
    return count, sorted(set(classes))


def _list_instances(
    node: Node, settings: PacsSettings, study_uid: str, series_uids: Sequence[str]
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for series in series_uids or [None]:
        records += find(node, settings, "image", study_uid=study_uid, series_uid=series)
    return records


def retrieve(
    node: Node,
    settings: PacsSettings,
    study_uid: str,
    out_dir: str | Path,
    *,
    series_uids: Sequence[str] = (),
    method: str | None = None,
    move_destination: str | None = None,
    parallel: int | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> RetrieveResult:
    """Retrieve a study (or some of its series) into ``out_dir`` (store layout study/series/sop.dcm).

    For a whole study on one association, one STUDY-level C-FIND answer gives the total (progress,
    ``complete``) and the SOP classes to propose (Orthanc fails a whole C-GET that lacks one), and the
    study is requested as a whole. Otherwise (series, ``parallel`` > 1, a PACS without the count) an
    IMAGE-level C-FIND lists the instances, which may be split over ``parallel`` associations, each
    retrieving its share by SOP Instance UID list. With C-MOVE the
    instances arrive at ``move_destination`` (a listener the PACS knows); a listener writing into
    ``out_dir`` is the caller's business (see :func:`MedImgAILib.pacs.listener.Listener`)."""
    method = method or node.retrieve
    if method not in ("get", "move"):
        raise PacsOperationError(f"retrieve method {method!r}: use 'get' or 'move'")
    if method == "get" and SYNC_GET and node.tls is None:
        # the lean requestor (retrieval.get), on the calling thread(s): no pynetdicom reactors
        return retrieval.get(node, settings, study_uid, out_dir, series_uids=series_uids, parallel=parallel,
                             on_progress=on_progress, cancel=cancel)
    if method == "move" and not move_destination:
        raise PacsOperationError("C-MOVE needs a destination AE title (a listener the PACS knows)")
    # Instances are written with temp name + rename but without a per-file fsync; one filesystem
    # flush at the end makes the retrieval durable before it is reported (see flush_filesystem).
    store = InstanceStore(Path(out_dir), durable=False)
    t0 = time.perf_counter()
    n = 1 if method == "move" else (parallel or node.parallel)
    count: int | None = None
    if n == 1 and not series_uids:
        # one association for the whole study: one STUDY-level answer gives the total and the classes
        count, classes = _study_summary(node, settings, study_uid)
    if count:
        instances: list[dict[str, Any]] = []
        expected = count
    else:
        instances = _list_instances(node, settings, study_uid, series_uids)
        expected = len(instances)
    result = RetrieveResult(study_uid=study_uid, out_dir=store.root, expected=expected, method=method)
    progress = _Progress(expected, on_progress)
    if instances:
        classes = sorted({r["sop_class_uid"] for r in instances if r.get("sop_class_uid")})
        # C-MOVE: one request; the PACS opens its own association to the destination.
        # Fewer than ~16 instances per association costs more in association set-up than it saves.
        n = max(1, min(n, len(instances) // 16 or 1))
        jobs = []
        for chunk in retrieval.chunks([r for r in instances], n):
            ident = Dataset()
            ident.QueryRetrieveLevel = "IMAGE"
            ident.StudyInstanceUID = study_uid
            series = sorted({r["series_uid"] for r in chunk if r.get("series_uid")})
            ident.SeriesInstanceUID = series if len(series) > 1 else (series[0] if series else "")
            ident.SOPInstanceUID = [r["sop_uid"] for r in chunk] if len(chunk) > 1 else chunk[0]["sop_uid"]
            jobs.append(ident)
    else:  # the whole study in one request (or the PACS lists no instances / has no IMAGE level)
        if not count:
            classes = []
        ident = Dataset()
        ident.QueryRetrieveLevel = "SERIES" if series_uids else "STUDY"
        ident.StudyInstanceUID = study_uid
        if series_uids:
            ident.SeriesInstanceUID = list(series_uids) if len(series_uids) > 1 else series_uids[0]
        jobs = [ident]
    result.associations = len(jobs)
    outcomes: list[retrieval.Outcome] = [retrieval.Outcome() for _ in jobs]

    def work(i: int) -> None:
        outcomes[i] = _run_get(node, settings, jobs[i], classes, store, progress, cancel, method, move_destination or "")

    threads = [threading.Thread(target=work, args=(i,), name=f"retrieve-{i}", daemon=True) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # C-MOVE: the instances went to the destination; the PACS's counts are all we know
    moved = sum(o.completed for o in outcomes) if method == "move" else None
    return retrieval.conclude(result, outcomes, progress, store.root, node, t0, method.upper(), received=moved)


# --- C-STORE ---------------------------------------------------------------------------------------
@dataclass
class StoreResult:
    sent: int = 0
    failed: int = 0
    warnings: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def count(self, status: int, name: str) -> None:
        """One C-STORE's status: sent (success or warning) or failed, with the file's name."""
        cat = code_to_category(status)
        if cat in ("Success", "Warning"):
            self.sent += 1
            self.warnings += cat == "Warning"
        else:
            self.failed += 1
            self.errors.append(f"{name}: status 0x{status:04X}")

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "failed": self.failed, "warnings": self.warnings, "skipped": self.skipped,
            "seconds": round(self.seconds, 3), "errors": self.errors[:20],
        }


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise PacsOperationError(f"{p} does not exist")
    return files


_chunked_lock = threading.Lock()
_chunked_users = 0


@contextlib.contextmanager
def _send_files_as_stored() -> Iterator[None]:
    """pynetdicom streams a file given by path as stored (no decode, no re-encode) only under its
    global ``STORE_SEND_CHUNKED_DATASET``; ``store`` hands it a path only over a context with the
    file's own transfer syntax. Scoped, so that other pynetdicom users in the process (a Slicer
    session) keep the default; concurrent sends share it."""
    global _chunked_users
    with _chunked_lock:
        _chunked_users += 1
        _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        with _chunked_lock:
            _chunked_users -= 1
            if not _chunked_users:
                _config.STORE_SEND_CHUNKED_DATASET = False


def store(
    node: Node,
    settings: PacsSettings,
    paths: Iterable[str | Path],
    *,
    on_progress: ProgressCallback | None = None,
) -> StoreResult:
    """C-STORE files (or every DICOM file under directories) to ``node``. Each file is sent in its own
    transfer syntax; non-DICOM files are skipped and counted."""
    t0 = time.perf_counter()
    result = StoreResult()
    items: list[tuple[Path, str, str, str]] = []  # (file, SOP class, SOP instance, transfer syntax)
    for f in collect_files(paths):
        try:
            hdr = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            meta = hdr.file_meta
            cls = str(meta.MediaStorageSOPClassUID if "MediaStorageSOPClassUID" in meta else hdr.SOPClassUID)
            sop = str(meta.MediaStorageSOPInstanceUID if "MediaStorageSOPInstanceUID" in meta else hdr.SOPInstanceUID)
            ts = str(meta.TransferSyntaxUID)
        except Exception:  # noqa: BLE001 - any unreadable file is "not DICOM" to a sender
            result.skipped += 1
            continue
        items.append((f, cls, sop, ts))
    if not items:
        result.seconds = time.perf_counter() - t0
        return result
    from .send import proposal, store_files

    if node.tls is None:  # the lean requestor (see pacs/send.py for why not pynetdicom's)
        store_files(node, settings, items, result, on_progress)
        result.seconds = time.perf_counter() - t0
        return result
    # the same proposal as the lean path: re-encoding a SEG/SR's nested sequences through pydicom
    # cost ~0.2 s per object, so a file goes as stored wherever the peer takes its syntax
    contexts = [build_context(cls, tss) for cls, tss in proposal(list(dict.fromkeys((c, t) for _, c, _, t in items)))]
    with associate(node, settings, contexts) as assoc, _send_files_as_stored():
        as_stored = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
        for i, (f, cls, _sop, ts) in enumerate(items, 1):
            try:
                # a path is streamed from the file (exact context); a dataset is re-encoded
                status = assoc.send_c_store(f if (cls, ts) in as_stored else pydicom.dcmread(f))
            except ValueError as exc:  # no accepted context for this class/syntax
                result.failed += 1
                result.errors.append(f"{f.name}: {exc}")
                continue
            if "Status" not in status:
                raise PacsTimeoutError(
                    f"{node} stopped answering C-STORE after {result.sent} of {len(items)} instances"
                )
            result.count(status.Status, f.name)
            if on_progress:
                on_progress(i, len(items))
    result.seconds = time.perf_counter() - t0
    return result
