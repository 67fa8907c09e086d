"""C-GET driven synchronously on an association pynetdicom negotiated: the retrieval hot path.

Why: through pynetdicom every received image crosses three threads (DUL reactor -> DIMSE queue ->
association reactor -> handler -> back to the reactor to send the response) and its PDUs and command
sets are decoded by general Python code; that measured ~7 ms of CPU per 512x512 image here against
~1 ms for DCMTK getscu, and on a loaded machine each hand-off also waits for a CPU slice.

How: pynetdicom still opens, negotiates (contexts, SCP/SCU roles), releases and aborts the
association. For the C-GET itself its two reactors are parked (see :class:`ReactorHold`) and this
module reads the P-DATA-TF PDUs from the socket itself, in the calling thread: command sets are
parsed in place (Implicit VR Little Endian, a handful of group 0000 elements), each C-STORE
sub-operation's dataset fragments are gathered and handed to ``on_instance`` (which writes and
validates; its status goes back in the C-STORE-RSP), and the C-GET-RSPs update the counts. The
request is encoded by pynetdicom's own message classes. A PDU that is not P-DATA (release, abort) is
left unread on the socket (peeked) and the reactors take over again to handle it as usual.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_GET_RQ
from pynetdicom.dimse_primitives import C_GET
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

# group 0000 elements used here (PS3.7 E.1)
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_DATASET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE = 0x1000
_COUNTS = {0x1020: "remaining", 0x1021: "completed", 0x1022: "failed", 0x1023: "warnings"}
_NO_DATASET = 0x0101
C_STORE_RQ_FIELD = 0x0001
C_GET_RSP_FIELD = 0x8010
C_STORE_RSP_FIELD = 0x8001
C_CANCEL_RQ_FIELD = 0x0FFF

#: called with (context_id, sop_class_uid, sop_instance_uid, dataset fragments); returns a status
InstanceHandler = Callable[[int, str, str, list[memoryview]], int]


class SyncGetError(Exception):
    """The exchange ended abnormally; ``timeout`` tells a DIMSE timeout from a peer abort/close."""

    def __init__(self, message: str, *, timeout: bool = False, abort: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.abort = abort  # the exchange is out of step: the association must be aborted


@dataclass
class SyncGetOutcome:
    completed: int = 0
    failed: int = 0
    warnings: int = 0
    remaining: int | None = None
    final_status: int | None = None
    cancelled: bool = False
    statuses: list[int] = field(default_factory=list)


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Element number -> raw value of a command set (group 0000, Implicit VR Little Endian)."""
    out: dict[int, bytes] = {}
    mv = memoryview(data)
    off, end = 0, len(mv)
    while off + 8 <= end:
        _group, elem, length = struct.unpack_from("<HHI", mv, off)
        off += 8
        out[elem] = bytes(mv[off:off + length])
        off += length
    return out


_PREAMBLE = b"\0" * 128 + b"DICM"


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # explicit VR with a 4-byte length
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def part10_head(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble and File Meta Information for a received dataset: the bytes pydicom's
    ``write_file_meta_info`` writes for pynetdicom's ``create_file_meta`` (a unit test holds them
    equal), encoded directly because through pydicom they cost ~0.4 ms per instance."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _ui(sop_class)),
        _meta_element(0x0003, b"UI", _ui(sop_instance)),
        _meta_element(0x0010, b"UI", _ui(transfer_syntax)),
        _meta_element(0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID)),
        _meta_element(0x0013, b"SH", version + b" " if len(version) % 2 else version),
    ))
    return _PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _us(value: bytes | None) -> int | None:
    return int.from_bytes(value[:2], "little") if value else None


def _uid(value: bytes | None) -> str:
    return value.rstrip(b"\0 ").decode("ascii", "replace") if value else ""


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def _ui(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set from (element, raw value) pairs in ascending order, with its group length."""
    body = b"".join(_element(e, v) for e, v in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def pdata_pdu(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU carrying a whole command set (last fragment) and no dataset."""
    item = bytes((context_id, 0x03)) + command
    return struct.pack(">BBII", 0x04, 0, len(item) + 4, len(item)) + item


def store_response(context_id: int, msg_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    cmd = encode_command([
        (_AFFECTED_SOP_CLASS, _ui(sop_class)),
        (_COMMAND_FIELD, struct.pack("<H", C_STORE_RSP_FIELD)),
        (_MESSAGE_ID_RESPONDED, struct.pack("<H", msg_id)),
        (_DATASET_TYPE, struct.pack("<H", _NO_DATASET)),
        (_STATUS, struct.pack("<H", status)),
        (_AFFECTED_SOP_INSTANCE, _ui(sop_instance)),
    ])
    return pdata_pdu(context_id, cmd)


def cancel_request(context_id: int, msg_id: int) -> bytes:
    cmd = encode_command([
        (_COMMAND_FIELD, struct.pack("<H", C_CANCEL_RQ_FIELD)),
        (_MESSAGE_ID_RESPONDED, struct.pack("<H", msg_id)),
        (_DATASET_TYPE, struct.pack("<H", _NO_DATASET)),
    ])
    return pdata_pdu(context_id, cmd)


class ReactorHold:
    """Parks an association's DUL reactor (it stops reading the socket) and its association reactor
    (it stops polling) while this thread drives the socket; both resume on exit. Needs the DUL to
    have been tuned by :func:`MedImgAILib.pacs.client.tune_association` (``_medimgai_hold``)."""

    def __init__(self, assoc: Any, *, pause_association: bool = True) -> None:
        self.assoc = assoc
        self.hold = getattr(assoc.dul, "_medimgai_hold", None)
        # an acceptor whose association reactor has not started yet has nothing to pause
        self.pause_association = pause_association

    @property
    def possible(self) -> bool:
        return self.hold is not None

    def __enter__(self) -> "ReactorHold":
        assoc, hold = self.assoc, self.hold
        if self.pause_association:
            # the association reactor waits on its checkpoint (as pynetdicom's own send_c_get does)
            assoc._reactor_checkpoint.clear()
            deadline = time.monotonic() + 10
            while not assoc._is_paused and time.monotonic() < deadline:
                time.sleep(0.0005)
        hold.held.clear()
        hold.resume.clear()
        hold.active = True
        hold.poke()
        if not hold.held.wait(10):
            self.__exit__()
            raise SyncGetError("association reactor did not pause")
        return self

    def __exit__(self, *exc: object) -> None:
        hold = self.hold
        hold.active = False
        hold.resume.set()
        hold.poke()
        if self.pause_association:
            self.assoc._reactor_checkpoint.set()


class _Wire:
    """Blocking PDU reads on a held association's socket, with a timeout."""

    def __init__(self, assoc: Any, timeout: float | None) -> None:
        self.assoc = assoc
        self.sock: socket.socket = assoc.dul.socket.socket
        self.timeout = timeout

    # -- socket -----------------------------------------------------------------------------
    # The socket is in timeout mode (pynetdicom sets the network timeout; SyncGet.run the DIMSE
    # timeout): a recv that waits longer raises socket.timeout, which ends the exchange.
    def _timed_out(self) -> SyncGetError:
        shown = f"{self.timeout:g} s" if self.timeout is not None else "the timeout"
        return SyncGetError(f"no DIMSE response within {shown}", timeout=True)

    def _wait_readable(self) -> None:
        r, _, _ = select.select([self.sock], [], [], self.timeout)
        if not r:
            raise self._timed_out()

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except socket.timeout:
                raise self._timed_out() from None
            except BlockingIOError:
                self._wait_readable()
                continue
            if k == 0:
                raise SyncGetError("connection closed by the peer")
            got += k
        return buf

    def _next_pdu_type(self) -> int:
        """Peek at the next PDU's type without consuming it (a non-P-DATA PDU is left for pynetdicom)."""
        head = self._peek(1)
        if not head:
            raise SyncGetError("connection closed by the peer")
        return head[0]

    def _peek(self, n: int) -> bytes:
        """The next ``n`` bytes without consuming them (fewer only if the peer closed)."""
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else 3600.0)
        while True:
            try:
                data = self.sock.recv(n, socket.MSG_PEEK)
            except socket.timeout:
                raise self._timed_out() from None
            except BlockingIOError:
                self._wait_readable()
                continue
            if len(data) >= n or data == b"":
                return data
            if time.monotonic() > deadline:  # part of it came, the rest never did
                raise self._timed_out()
            time.sleep(0.0002)  # part of it is there: the rest is on its way

    def _read_pdu(self) -> memoryview:
        header = self._read_exact(6)
        (length,) = struct.unpack_from(">I", header, 2)
        return memoryview(self._read_exact(length))


class SyncGet(_Wire):
    """One C-GET on an established (and held) association."""

    # -- the exchange -----------------------------------------------------------------------
    def run(
        self,
        identifier: Dataset,
        query_model: str,
        on_instance: InstanceHandler,
        *,
        msg_id: int = 1,
        cancel: threading.Event | None = None,
        on_response: Callable[[SyncGetOutcome], None] | None = None,
    ) -> SyncGetOutcome:
        assoc = self.assoc
        cx = assoc._get_valid_context(query_model, "", "scu")
        ts = cx.transfer_syntax[0]
        req = C_GET()
        req.MessageID = msg_id
        req.AffectedSOPClassUID = UID(query_model)
        req.Priority = 2
        req.Identifier = BytesIO(encode(identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated))
        msg = C_GET_RQ()
        msg.primitive_to_message(req)
        peer_max = assoc.acceptor.maximum_length or 0
        old_timeout = self.sock.gettimeout()
        self.sock.settimeout(self.timeout)
        try:
            for pdata in msg.encode_msg(cx.context_id, peer_max):
                self.sock.sendall(P_DATA_TF(pdata).encode())
            return self._receive(cx.context_id, msg_id, on_instance, cancel, on_response)
        finally:
            try:
                self.sock.settimeout(old_timeout)
            except OSError:
                pass

    def _receive(
        self,
        query_cx: int,
        msg_id: int,
        on_instance: InstanceHandler,
        cancel: threading.Event | None,
        on_response: Callable[[SyncGetOutcome], None] | None,
    ) -> SyncGetOutcome:
        out = SyncGetOutcome()
        command = bytearray()
        cmd: dict[int, bytes] | None = None
        cmd_cx = 0
        fragments: list[memoryview] = []
        cancel_sent = False
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                self.sock.sendall(cancel_request(query_cx, msg_id))
                cancel_sent = True
            pdu_type = self._next_pdu_type()
            if pdu_type != 0x04:
                kind = {0x05: "released", 0x07: "aborted"}.get(pdu_type, f"sent PDU type 0x{pdu_type:02X} during")
                raise SyncGetError(f"peer {kind} the association" if pdu_type in (5, 7) else f"peer {kind} C-GET")
            body = self._read_pdu()
            length = len(body)
            off = 0
            while off + 6 <= length:
                (item_len,) = struct.unpack_from(">I", body, off)
                context_id, control = body[off + 4], body[off + 5]
                data = body[off + 6:off + 4 + item_len]
                off += 4 + item_len
                if control & 0x01:  # command fragment
                    command += data
                    if not control & 0x02:
                        continue
                    cmd, cmd_cx = parse_command(command), context_id
                    command = bytearray()
                    fragments = []
                    if _us(cmd.get(_DATASET_TYPE)) != _NO_DATASET:
                        continue  # its dataset follows
                else:  # dataset fragment
                    fragments.append(data)
                    if not control & 0x02:
                        continue
                if cmd is None:
                    raise SyncGetError("peer sent a dataset without a command")
                done = self._message(cmd, cmd_cx, fragments, out, on_instance, on_response)
                cmd, fragments = None, []
                if done:
                    out.cancelled = out.cancelled or out.final_status == 0xFE00
                    return out

    def _message(
        self,
        cmd: dict[int, bytes],
        context_id: int,
        fragments: list[memoryview],
        out: SyncGetOutcome,
        on_instance: InstanceHandler,
        on_response: Callable[[SyncGetOutcome], None] | None,
    ) -> bool:
        field_ = _us(cmd.get(_COMMAND_FIELD))
        if field_ == C_STORE_RQ_FIELD:
            sop_class = _uid(cmd.get(_AFFECTED_SOP_CLASS))
            sop_instance = _uid(cmd.get(_AFFECTED_SOP_INSTANCE))
            status = on_instance(context_id, sop_class, sop_instance, fragments) if fragments else 0xC000
            self.sock.sendall(store_response(context_id, _us(cmd.get(_MESSAGE_ID)) or 0, sop_class, sop_instance, status))
            return False
        if field_ == C_GET_RSP_FIELD:
            status = _us(cmd.get(_STATUS))
            for elem, name in _COUNTS.items():
                if elem in cmd and cmd[elem]:
                    setattr(out, name, _us(cmd[elem]))
            out.statuses.append(status if status is not None else -1)
            if status in (0xFF00, 0xFF01):  # pending
                if on_response:
                    on_response(out)
                return False
            out.final_status = status
            return True
        raise SyncGetError(f"peer sent an unexpected DIMSE message (command 0x{field_ or 0:04X}) during C-GET")


#: called with (context_id, sop_class_uid, sop_instance_uid, dataset fragments); returns a status
StoreHandler = InstanceHandler


class SyncStoreSCP(_Wire):
    """Serves C-STORE requests on an accepted (and held) association from the association's thread,
    for as long as the peer sends C-STORE-RQs: a PDU that is not P-DATA (release, abort), a message
    that is not a C-STORE-RQ (echo, find, get, move...) or a command set split over several
    fragments is left unread (peeked) for pynetdicom, which then serves the rest of the association.
    Returns the number of instances served."""

    def serve(
        self,
        on_store: StoreHandler,
        stop: Callable[[], bool] = lambda: False,
        after_response: Callable[[], None] | None = None,
    ) -> int:
        """``after_response`` runs after each C-STORE-RSP has left: work that is no part of what the
        status promises overlaps with the sender preparing its next instance."""
        served = 0
        while not stop():
            if not self._idle_until_data(stop) or not self._next_is_store_request():
                return served
            try:  # from here on the message is being consumed: any failure leaves the association out of step
                cmd: dict[int, bytes] | None = None
                cmd_cx = 0
                fragments: list[memoryview] = []
                finished = False
                while not finished:
                    if self._peek(1)[:1] != b"\x04":  # abort/release/close in the middle of a message
                        raise SyncGetError("peer ended the association during a C-STORE")
                    body = self._read_pdu()
                    off, length = 0, len(body)
                    while off + 6 <= length and not finished:
                        (item_len,) = struct.unpack_from(">I", body, off)
                        context_id, control = body[off + 4], body[off + 5]
                        data = body[off + 6:off + 4 + item_len]
                        off += 4 + item_len
                        if control & 0x01:
                            cmd, cmd_cx = parse_command(data), context_id
                        else:
                            fragments.append(data)
                            finished = bool(control & 0x02)
                    if off != length:  # malformed, or the next message shares this PDU: not ours to split
                        raise SyncGetError("P-DATA-TF PDU not understood", abort=True)
                if cmd is None:
                    raise SyncGetError("dataset without a command", abort=True)
            except SyncGetError as exc:
                exc.abort = True
                raise
            sop_class = _uid(cmd.get(_AFFECTED_SOP_CLASS))
            sop_instance = _uid(cmd.get(_AFFECTED_SOP_INSTANCE))
            status = on_store(cmd_cx, sop_class, sop_instance, fragments)
            self.sock.sendall(store_response(cmd_cx, _us(cmd.get(_MESSAGE_ID)) or 0, sop_class, sop_instance, status))
            served += 1
            if after_response is not None:
                after_response()
        return served

    def _idle_until_data(self, stop: Callable[[], bool]) -> bool:
        """Wait for the next message (up to the timeout, waking twice a second to see whether the
        listener is stopping). False: stop, or nothing came: pynetdicom decides what happens next."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0 or stop():
                return False
            r, _, _ = select.select([self.sock], [], [], wait)
            if r:
                return True

    def _next_is_store_request(self) -> bool:
        """Whether the next PDU starts a C-STORE-RQ whose whole command set is in its first PDV."""
        if self._peek(1)[:1] != b"\x04":  # release, abort (10 bytes: never wait for 12) or closed
            return False
        head = self._peek(12)
        if len(head) < 12:
            return False
        (item_len,) = struct.unpack_from(">I", head, 6)
        control = head[11]
        if not (control & 0x01 and control & 0x02) or item_len > 16384:
            return False
        item = self._peek(10 + item_len)
        if len(item) < 10 + item_len:
            return False
        cmd = parse_command(memoryview(item)[12:])
        return _us(cmd.get(_COMMAND_FIELD)) == C_STORE_RQ_FIELD and _us(cmd.get(_DATASET_TYPE)) != _NO_DATASET
