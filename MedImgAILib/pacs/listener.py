"""The listener: a Storage SCP that a PACS or modality routes studies to, plus query/retrieve
(C-FIND/C-GET/C-MOVE) over what it holds, so it doubles as the embedded PACS for the demo.

Promises, in the order a received instance meets them:
1. only allowed calling AEs associate (others are rejected at association, naming the reason);
2. the disk has room (else 0xA700 out of resources, nothing written);
3. the instance's UIDs are valid DICOM UIDs (else refused: a crafted UID never becomes a path);
4. it is on disk durably and recorded in the index before the success status leaves: appended to the
   store's write-ahead journal with one fdatasync, then placed as its file (temp name + rename; the
   journal's checkpoint flushes the files, its replay restores them after a crash);
5. a study is "complete" after ``quiet_seconds`` without a new instance: ``on_study_complete(study_uid,
   paths)`` is called once per quiet period (again if more instances arrive later);
6. SIGTERM stops accepting, lets in-flight instances finish, then exits; a restart re-scans the store
   so every acknowledged instance is indexed, and studies never reported complete are reported.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom import sop_class as sc

from . import dimse, syncget
from .client import tune_association
from .errors import PacsConnectionError, UnsafeUidError
from .qr import find_answers, select_instances
from .settings import ListenerSettings, TlsSettings, validate_aet
from .storage import InstanceStore, fsync_dir, header_of

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_MISMATCH = 0xA900
COMPLETE_MARKER = ".study-complete"
#: C-STOREs without TLS are served on the association's thread (syncget); False = pynetdicom's path
SYNC_STORE = True

StudyCallback = Callable[[str, list[Path]], None]


class InstanceIndex(Protocol):
    """What the listener needs from the metadata index (MedImgAILib.dicom.index.StudyIndex)."""

    def add_instance(self, path: Path, ds: Dataset) -> Any: ...


@dataclass
class ListenerConfig:
    aet: str = "MEDIMGAI"
    host: str = "127.0.0.1"
    port: int = 11112  # 0 = any free port (see Listener.port)
    store_dir: Path = Path("store")
    #: calling AE titles allowed to associate; empty = anyone
    allow: list[str] = field(default_factory=list)
    max_associations: int = 8
    quiet_seconds: float = 30.0
    min_free_mb: float = 1024.0
    tls: TlsSettings | None = None
    #: C-MOVE destinations: AE title -> (host, port)
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: answer C-FIND/C-GET/C-MOVE over the store (the embedded PACS)
    query_retrieve: bool = True
    timeouts: tuple[float | None, float | None, float | None] = (30.0, 60.0, 120.0)  # acse, dimse, network
    #: write-ahead journal size (written once, when the store is new): a burst of up to this much
    #: is acknowledged without waiting for a checkpoint (a flush of the placed files)
    journal_mb: float = 256.0

    @classmethod
    def from_settings(cls, s: ListenerSettings, **overrides: Any) -> "ListenerConfig":
        cfg = cls(
            aet=s.aet, host=s.host, port=s.port, store_dir=Path(s.store).expanduser(), allow=list(s.allow),
            max_associations=s.max_associations, quiet_seconds=s.quiet_seconds, min_free_mb=s.min_free_mb,
            tls=s.tls,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg


class Listener:
    """Start with :meth:`start` (returns at once) or :meth:`serve_forever` (until SIGTERM/SIGINT)."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        index: InstanceIndex | None = None,
        on_study_complete: StudyCallback | None = None,
    ) -> None:
        self.config = config
        validate_aet(config.aet, "listener AE title")
        for a in config.allow:
            validate_aet(a, "allowed calling AE title")
        self.store = InstanceStore(config.store_dir, durable=True)
        self.index = index
        self.on_study_complete = on_study_complete
        self._server: Any = None
        self._ae: AE | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._last_seen: dict[str, float] = {}  # study UID -> monotonic time of its last new instance
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.received = 0
        self.refused = 0
        self.received_sync = 0  # of which served on the association's thread (syncget)
        self._placer = _Placer(self._place, self._catalog_and_index)

    # -- life cycle -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def start(self) -> "Listener":
        # instances acknowledged before a crash but lost with the page cache come back from the journal
        self.store.open_journal(int(self.config.journal_mb * 1024 * 1024))
        if self.store.journal is not None:
            self.store.journal.wake = self._placer.wake
        self._rescan()
        ae = AE(ae_title=self.config.aet)
        ae.maximum_associations = self.config.max_associations
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = self.config.timeouts
        ae.maximum_pdu_size = 0  # no limit: peers may send whole images in one PDU
        ae.require_called_aet = True
        if self.config.allow:
            ae.require_calling_aet = list(self.config.allow)
        ae.add_supported_context(sc.Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # scp_role=True: also accept a C-GET requestor acting as Storage SCP on this context
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
        if self.config.query_retrieve:
            for model in (
                sc.StudyRootQueryRetrieveInformationModelFind, sc.PatientRootQueryRetrieveInformationModelFind,
                sc.StudyRootQueryRetrieveInformationModelGet, sc.PatientRootQueryRetrieveInformationModelGet,
                sc.StudyRootQueryRetrieveInformationModelMove, sc.PatientRootQueryRetrieveInformationModelMove,
            ):
                ae.add_supported_context(model)
        handlers = [
            (evt.EVT_CONN_OPEN, tune_association),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, lambda e: STATUS_SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        ssl_context = self.config.tls.server_context() if self.config.tls else None
        try:
            self._server = ae.start_server(
                (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
            )
        except OSError as exc:
            self.store.close()
            raise PacsConnectionError(
                f"listener {self.config.aet} cannot listen on {self.config.host}:{self.config.port}: "
                f"{(exc.strerror or str(exc)).lower()}"
            ) from exc
        # each association starts with a deep copy of these (~130 classes x every transfer syntax):
        # make it cheap (see _ContextsCopiedCheaply)
        self._server.contexts = _ContextsCopiedCheaply(self._server.contexts)
        self._ae = ae
        self._monitor = threading.Thread(target=self._watch_studies, name="study-quiet-monitor", daemon=True)
        self._monitor.start()
        log.info("listener %s on %s:%d, store %s", self.config.aet, self.config.host, self.port, self.store.root)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let associations in progress finish (up to ``timeout``), then close."""
        self._stop.set()
        if self._server is None:
            return
        self._server.shutdown()  # no new associations
        deadline = time.monotonic() + timeout
        assert self._ae is not None
        while self._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._idle:  # an instance being written is finished before we return
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(0.1)
        for assoc in self._ae.active_associations:
            assoc.abort()
        self._ae.shutdown()
        self._server = None
        self._placer.close()  # every acknowledged instance placed, cataloged and indexed
        self.store.close()  # journal checkpoint: everything placed is durable, a restart replays nothing
        if self._monitor:
            self._monitor.join(timeout=5)

    def serve_forever(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop cleanly (call from the main thread)."""
        self.start()
        self.serve_until_signal()

    def serve_until_signal(self) -> None:
        """Block until SIGTERM or SIGINT, then :meth:`stop` (main thread only)."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("listener: signal %d, stopping", signum)
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- restart --------------------------------------------------------------------------------
    def _rescan(self) -> None:
        """Index every instance already in the store (an acknowledged instance whose index write was
        cut short by a crash is indexed now) and re-arm studies never reported complete."""
        n = 0
        batch: list[tuple[Path, Dataset]] = []
        for rec, ds in self.store.scan():
            batch.append((rec.path, ds))
            if len(batch) >= 500:
                self._index_batch(batch)
            study = rec.attrs.get("StudyInstanceUID", "")
            if study and not (self.store.root / study / COMPLETE_MARKER).exists():
                self._last_seen[study] = time.monotonic()
            n += 1
        self._index_batch(batch)
        if n:
            log.info("listener: %d instances already in the store, %d studies pending", n, len(self._last_seen))

    def _index_batch(self, batch: list[tuple[Path, Dataset]]) -> None:
        """Index re-scanned instances (one transaction per batch where the index offers it); the
        index ignores instances it already has."""
        if self.index is not None and batch:
            add_many = getattr(self.index, "add_instances", None)
            if add_many is not None:
                add_many(batch)
            else:
                for path, ds in batch:
                    self.index.add_instance(path, ds)
        batch.clear()

    # -- storage --------------------------------------------------------------------------------
    def _on_rejected(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        log.warning("listener: association from %s (%s) rejected", req.ae_title, req.address)

    def _on_store(self, event: evt.Event) -> int:
        """pynetdicom's C-STORE path (used when the synchronous one is not: TLS, or an association
        that starts with another service). The dataset's raw bytes, never decoded here."""
        req = event.request
        raw = req.DataSet.getvalue() if req.DataSet is not None else b""
        return self._store_one(event.assoc.requestor.ae_title, str(req.AffectedSOPClassUID or ""),
                               str(req.AffectedSOPInstanceUID or ""), str(event.context.transfer_syntax),
                               [raw] if raw else [])

    def _on_established(self, event: evt.Event) -> None:
        """Serve the association's C-STOREs on its own thread, synchronously (see syncget): about a
        third of pynetdicom's CPU per instance and no thread hand-offs. pynetdicom takes over again at
        the first PDU that is not a C-STORE-RQ (release, abort, echo, find, get, move)."""
        assoc = event.assoc
        if not SYNC_STORE or self.config.tls is not None:
            return
        hold = syncget.ReactorHold(assoc, pause_association=False)  # its reactor has not started yet
        if not hold.possible:
            return
        calling = assoc.requestor.ae_title
        accepted = assoc._accepted_cx

        def on_store(context_id: int, sop_class: str, sop_instance: str, fragments: list[memoryview]) -> int:
            cx = accepted.get(context_id)
            if cx is None or not cx.transfer_syntax:
                return STATUS_CANNOT_UNDERSTAND
            return self._store_one(calling, sop_class or str(cx.abstract_syntax), sop_instance,
                                   str(cx.transfer_syntax[0]), fragments)

        try:
            with hold:
                dul, dimse_ = assoc.dul, assoc.dimse
                if not (dul.event_queue.empty() and dul._recv_pdu.empty() and dimse_.message is None
                        and dimse_.msg_queue.empty()):
                    return  # the reactor read the first message before the hold: pynetdicom serves it all
                served = syncget.SyncStoreSCP(assoc, assoc.network_timeout).serve(
                    on_store, stop=lambda: self._stop.is_set() or assoc.is_aborted)
                with self._lock:
                    self.received_sync += served
        except syncget.SyncGetError as exc:
            if exc.abort:
                log.warning("listener: association from %s aborted: %s", calling, exc)
                assoc.abort()
        except (OSError, ValueError) as exc:  # the connection broke or was closed: pynetdicom cleans up
            log.info("listener: association from %s: %s", calling, getattr(exc, "strerror", None) or exc)

    def _store_one(
        self, calling: str, sop_class: str, request_sop_uid: str, transfer_syntax: str, fragments: list[Any],
    ) -> int:
        with self._lock:
            self._inflight += 1
        try:
            return self._receive(calling, sop_class, request_sop_uid, transfer_syntax, fragments)
        except OSError as exc:  # the store cannot be used (its folder removed, unmounted, read-only)
            self.refused += 1
            log.error("listener: cannot store instance from %s in %s: %s", calling, self.store.root,
                      exc.strerror or exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # noqa: BLE001 - the sender gets a failure status, never silence
            self.refused += 1
            log.error("listener: instance from %s failed (%s: %s)", calling, exc.__class__.__name__, exc)
            return STATUS_CANNOT_UNDERSTAND
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _receive(
        self, calling: str, sop_class: str, request_sop_uid: str, transfer_syntax: str, fragments: list[Any],
    ) -> int:
        """What must hold before the success status: room on the disk, a well-formed dataset whose
        SOP Instance UID is the request's, valid UIDs (they name the path), and the instance's bytes
        durable (one journal flush). The rest — the file placed, the header parsed, the catalog
        and the index — is the :class:`_Placer`'s, after the status (see docs/pacs.md, Listener)."""
        min_free = self.config.min_free_mb * 1024 * 1024
        if self.store.free_bytes() < min_free:
            self.refused += 1
            log.error("listener: store %s has less than %g MB free: refusing instance from %s",
                      self.store.root, self.config.min_free_mb, calling)
            return STATUS_OUT_OF_RESOURCES
        data = fragments[0] if len(fragments) == 1 else b"".join(fragments)
        uids = dimse.naming_uids(data, transfer_syntax) if dimse.well_formed(data, transfer_syntax) else None
        if uids is None:  # deflated, big endian, or not walkable here: pydicom decides (slow path)
            try:
                ds = header_of(b"".join([syncget.part10_head(sop_class, request_sop_uid, transfer_syntax), data]))
                uids = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                        str(ds.get("SOPInstanceUID", "")))
            except Exception as exc:  # noqa: BLE001 - anything unparseable is refused, never stored
                self.refused += 1
                log.warning("listener: unreadable dataset from %s refused (%s)", calling, exc.__class__.__name__)
                return STATUS_CANNOT_UNDERSTAND
        study, series, sop = uids
        if sop != request_sop_uid:
            self.refused += 1
            log.warning("listener: dataset from %s does not match its C-STORE request's SOP Instance UID", calling)
            return STATUS_DATASET_MISMATCH
        try:
            path = self.store.path_for(study, series, sop)
        except UnsafeUidError as exc:
            self.refused += 1
            log.warning("listener: instance from %s refused: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        parts = [syncget.part10_head(sop_class, sop, transfer_syntax), data]
        try:
            offset = self.store.make_durable(path, parts)
        except OSError as exc:  # disk full, quota, I/O error: all "out of resources" to the sender (0xA7xx)
            self.refused += 1
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            log.error("listener: cannot write instance from %s: %s%s", calling, exc.strerror or exc,
                      " (disk full)" if full else "")
            return STATUS_OUT_OF_RESOURCES
        with self._lock:
            self._last_seen[study] = time.monotonic()
            self.received += 1
        marker = self.store.root / study / COMPLETE_MARKER
        if marker.exists():
            marker.unlink(missing_ok=True)
        # the placer copies the file out of the journal later: nothing of the instance stays in memory
        self._placer.submit((path, None if offset is None else (offset, len(parts[0]) + len(data)), transfer_syntax))
        return STATUS_SUCCESS

    def _place(self, path: Path, in_journal: tuple[int, int] | None, transfer_syntax: str) -> tuple[Path, str]:
        """The placer's first step for an acknowledged instance: its file, copied out of the journal
        (unless it was written in place: no journal, or too big for it)."""
        if in_journal is not None:
            self.store.place(path, in_journal)
        return path, transfer_syntax

    def _catalog_and_index(self, placed: list[tuple[Path, str]]) -> None:
        """The placer's second step, for a batch: header parsed (from the file, in the page cache),
        catalog record (C-FIND keys), index record. A crash before this is repaired at restart: the
        journal's replay places the files, the re-scan catalogs and indexes every instance."""
        import pydicom

        batch: list[tuple[Path, Dataset]] = []
        for path, ts in placed:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - stored and acknowledged; C-FIND will not see it
                log.error("listener: stored instance %s unreadable (%s)", path.name, exc.__class__.__name__)
                continue
            self.store.catalog(path, ds, ts)
            batch.append((path, ds))
        if self.index is None or not batch:
            return
        for attempt in range(3):
            try:
                self._index_batch(list(batch))
                return
            except Exception as exc:  # noqa: BLE001 - retried; else indexed by the next start's re-scan
                if attempt == 2:
                    log.error("listener: %d instance(s) stored but not indexed (%s); they are indexed at the "
                              "next start's re-scan", len(batch), exc)
                else:
                    time.sleep(0.2)

    # -- study completion -----------------------------------------------------------------------
    def _watch_studies(self) -> None:
        quiet = self.config.quiet_seconds
        while not self._stop.wait(min(0.5, quiet / 4)):
            now = time.monotonic()
            with self._lock:
                due = [s for s, t in self._last_seen.items() if now - t >= quiet]
                for s in due:
                    del self._last_seen[s]
            for study in due:
                self._complete(study)

    def _complete(self, study_uid: str) -> None:
        self._placer.drain()  # every instance acknowledged so far is in the catalog
        paths = sorted(r.path for r in self.store.records() if r.attrs.get("StudyInstanceUID") == study_uid)
        log.info("listener: study complete (%d instances)", len(paths))  # the UID is not PHI, but keep logs lean
        if self.on_study_complete is not None:
            try:
                self.on_study_complete(study_uid, paths)
            except Exception:  # noqa: BLE001 - a failing callback must not stop the listener
                log.exception("listener: on_study_complete failed; study will be reported again after restart")
                return
        marker = self.store.root / study_uid / COMPLETE_MARKER
        if marker.parent.is_dir():
            marker.touch()
            fsync_dir(marker.parent)

    # -- query / retrieve -----------------------------------------------------------------------
    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self._placer.drain()  # answer over everything acknowledged so far
        try:
            answers = find_answers(self.store.records(), event.identifier)
        except ValueError as exc:
            log.warning("listener: C-FIND refused: %s", exc)
            yield 0xA900, None
            return
        for ds in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds

    def _instances_for(self, event: evt.Event) -> list[Any]:
        self._placer.drain()
        return select_instances(self.store.records(), event.identifier)

    def _send_instances(self, event: evt.Event, recs: list[Any]) -> Iterator[tuple[int, Dataset | None]]:
        for rec in recs:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            try:
                ds = pydicom.dcmread(rec.path)
            except (OSError, ValueError) as exc:
                log.error("listener: stored instance unreadable (%s)", exc.__class__.__name__)
                yield 0xA702, None  # out of resources: unable to perform sub-operations
                continue
            yield 0xFF00, ds

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        recs = self._instances_for(event)
        yield len(recs)
        yield from self._send_instances(event, recs)

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        dest = self.config.move_destinations.get(str(event.move_destination or "").strip())
        if dest is None:
            log.warning("listener: C-MOVE to unknown destination refused")
            yield None, None
            return
        recs = self._instances_for(event)
        # The sub-association proposes one context per SOP class/transfer syntax we will send.
        contexts = sorted({(r.attrs.get("SOPClassUID", ""), r.transfer_syntax or ExplicitVRLittleEndian) for r in recs})
        yield dest[0], dest[1], {
            "contexts": [build_context(c, list(dict.fromkeys([t, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
                         for c, t in contexts if c][:128] or [build_context(sc.CTImageStorage)],
            "evt_handlers": [(evt.EVT_CONN_OPEN, tune_association)],
        }
        yield len(recs)
        yield from self._send_instances(event, recs)


class _ContextsCopiedCheaply(list):
    """The listener's supported presentation contexts, as pynetdicom's association server holds
    them. pynetdicom gives each new association ``copy.deepcopy`` of that list; a deep copy
    re-creates every pydicom ``UID`` and re-validates it with a regular expression: with ~130 storage
    classes times every transfer syntax that took 60-170 ms here before each A-ASSOCIATE-AC,
    about a tenth of receiving a 200-image CT. The copy made here is as independent — each context a
    new object with its own transfer syntax list — but shares the UID strings, which are immutable
    (the negotiation only reads these contexts and builds new ones for its result)."""

    def __deepcopy__(self, memo: dict) -> list:
        out = []
        for cx in self:
            new = object.__new__(cx.__class__)  # copy.copy's reduce protocol costs ~10x this
            new.__dict__.update(cx.__dict__)
            new._transfer_syntax = list(cx._transfer_syntax)
            out.append(new)
        return out


class _Placer:
    """One thread that does, for each acknowledged instance, what the success status does not wait
    for: ``place`` (its file, copied out of the journal) and then ``index`` (header parsed,
    catalog, index: pure Python under the GIL). Both run in batches, in arrival order, once no
    instance has come for ``idle_s``, when ``batch`` are waiting, when the journal needs room
    (its checkpoint calls :meth:`wake`) or when :meth:`drain` asks (a query, a study completion,
    a stop). Done between instances, they made each acknowledgement wait for the GIL and for the
    disk, which was writing the placed files back while the journal flushed (3-5 ms per
    acknowledgement instead of ~1 ms here). :meth:`submit` only appends (no thread is woken on
    the acknowledgement path); the thread looks every ``idle_s``. Nothing waiting holds an
    instance's bytes (they are in the journal), so the list needs no bound."""

    def __init__(self, place: Callable[..., Any], index: Callable[[list], None], *, idle_s: float = 0.2,
                 batch: int = 256) -> None:
        import collections

        self._place, self._index = place, index
        self._idle_s, self._batch = idle_s, batch
        self._waiting: collections.deque[tuple] = collections.deque()
        self._last_submit = 0.0
        self._cond = threading.Condition()
        self._requests: list[threading.Event] = []  # drains waiting for a catch-up
        self._urgent = False  # the journal needs room, or a drain/close asked
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="listener-placer", daemon=True)
        self._thread.start()

    def submit(self, item: tuple) -> None:
        self._waiting.append(item)  # deque.append is atomic: no lock, no wake-up
        self._last_submit = time.monotonic()
        if len(self._waiting) >= self._batch:
            self.wake()

    def wake(self) -> None:
        """Catch up now (the journal needs room, or a batch is full); never blocks for long."""
        with self._cond:
            self._urgent = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._urgent:
                    self._cond.wait(self._idle_s)
                urgent, self._urgent = self._urgent, False
                requests, self._requests = self._requests, []
                closing = self._closing
            idle = time.monotonic() - self._last_submit >= self._idle_s
            if urgent or idle or closing:
                self._catch_up()
            for done in requests:
                done.set()
            if closing:
                return

    def _catch_up(self) -> None:
        placed = []
        while self._waiting:
            item = self._waiting.popleft()
            try:
                placed.append(self._place(*item))
            except Exception:  # noqa: BLE001 - one bad instance must not stop the others
                log.exception("listener: placing an acknowledged instance failed (the journal replays it at restart)")
        if placed:
            try:
                self._index(placed)
            except Exception:  # noqa: BLE001
                log.exception("listener: cataloging/indexing acknowledged instances failed (repaired at restart)")

    def drain(self) -> None:
        """Wait until every instance submitted so far is placed, cataloged and indexed."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return
        done = threading.Event()
        with self._cond:
            self._requests.append(done)
            self._urgent = True
            self._cond.notify()
        while not done.wait(0.5) and self._thread.is_alive():
            pass

    def close(self) -> None:
        if self._thread.is_alive():
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()


def move_into(
    node: Any,
    settings: Any,
    study_uid: str,
    out_dir: str | Path,
    *,
    series_uids: list[str] | tuple[str, ...] = (),
    port: int | None = None,
    host: str = "127.0.0.1",
    on_progress: Any = None,
    cancel: threading.Event | None = None,
) -> Any:
    """C-MOVE a study to a temporary listener (our AE title, ``host:port``) writing into ``out_dir``.
    The PACS must know our AE title at that address. Returns a RetrieveResult whose ``received``
    counts the instances that reached ``out_dir`` (not what the PACS claims it sent)."""
    from .client import retrieve

    listen_port = port if port is not None else settings.listener.port
    # a 64 MB journal (as before): this temporary listener writes it into out_dir once per retrieval
    cfg = ListenerConfig(aet=settings.local_aet, host=host, port=listen_port, store_dir=Path(out_dir),
                         quiet_seconds=3600, min_free_mb=settings.listener.min_free_mb, query_retrieve=False,
                         journal_mb=64)
    with Listener(cfg) as listener:
        result = retrieve(node, settings, study_uid, out_dir, series_uids=series_uids, method="move",
                          move_destination=settings.local_aet, on_progress=on_progress, cancel=cancel)
    arrived = [r for r in listener.store.records() if r.attrs.get("StudyInstanceUID") == study_uid]
    if series_uids:
        arrived = [r for r in arrived if r.attrs.get("SeriesInstanceUID") in set(series_uids)]
    result.received = len(arrived)
    result.paths = sorted(r.path for r in arrived)
    expected = result.expected or result.received
    result.complete = result.complete and result.received >= expected
    return result
