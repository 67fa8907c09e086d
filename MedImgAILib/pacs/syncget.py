"""C-STOREs served synchronously on an association pynetdicom accepted: the listener's hot path.

Why: through pynetdicom every received image crosses three threads (DUL reactor -> DIMSE queue ->
association reactor -> handler -> back to the reactor to send the response) and its PDUs and command
sets are decoded by general Python code; that measured ~7 ms of CPU per 512x512 image here against
~1 ms for DCMTK, and on a loaded machine each hand-off also waits for a CPU slice.

How: pynetdicom still accepts and negotiates the association (contexts, roles), and serves anything
that is not a C-STORE. For the C-STOREs its two reactors are parked (see :class:`ReactorHold`) and
this module reads the P-DATA-TF PDUs from the socket itself, in the association's thread: command
sets are parsed in place (Implicit VR Little Endian, a handful of group 0000 elements; the encoding
helpers are shared with the lean requestor, :mod:`.dimse`), each C-STORE's dataset fragments are
handed to ``on_store`` (which checks and stores; its status goes back in the C-STORE-RSP). A PDU
that is not P-DATA (release, abort) is left unread on the socket (peeked) and the reactors take over
again to handle it as usual. (Retrieval no longer needs this: `pacs get` runs on :mod:`.dimse`.)
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any, Callable

from .dimse import (  # noqa: F401 - re-exported: the listener and the tests use them from here
    C_STORE_RQ_FIELD,
    _AFFECTED_SOP_CLASS,
    _AFFECTED_SOP_INSTANCE,
    _COMMAND_FIELD,
    _DATASET_TYPE,
    _MESSAGE_ID,
    _NO_DATASET,
    cancel_request,
    encode_command,
    parse_command,
    part10_head,
    pdata_pdu,
    recv_exact,
    recv_into_exact,
    store_response,
)
from .dimse import uid_text as _uid
from .dimse import us as _us

__all__ = ["ReactorHold", "StoreHandler", "SyncGetError", "SyncStoreSCP", "cancel_request", "encode_command",
           "parse_command", "part10_head", "pdata_pdu", "store_response"]


class SyncGetError(Exception):
    """The exchange ended abnormally; ``timeout`` tells a DIMSE timeout from a peer abort/close."""

    def __init__(self, message: str, *, timeout: bool = False, abort: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.abort = abort  # the exchange is out of step: the association must be aborted


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
    # The socket is in timeout mode (pynetdicom sets the network timeout): a recv that waits
    # longer raises socket.timeout, which ends the exchange.
    def _timed_out(self) -> SyncGetError:
        shown = f"{self.timeout:g} s" if self.timeout is not None else "the timeout"
        return SyncGetError(f"no DIMSE response within {shown}", timeout=True)

    def _wait_readable(self) -> None:
        r, _, _ = select.select([self.sock], [], [], self.timeout)
        if not r:
            raise self._timed_out()

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return buf

    def _fill(self, view: memoryview) -> None:
        try:
            recv_into_exact(self.sock, view, self._wait_readable)
        except socket.timeout:
            raise self._timed_out() from None
        except EOFError:
            raise SyncGetError("connection closed by the peer") from None

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
            left = deadline - time.monotonic()
            if left <= 0:  # part of it came, the rest never did
                raise self._timed_out()
            if self._wait_for(n, left):
                again = self.sock.recv(n, socket.MSG_PEEK)
                if len(again) == len(data):  # readable without more bytes: the peer closed
                    return again

    def _wait_for(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` bytes can be read, the peer closed, or ``timeout`` (at most 0.5 s) has
        passed; True when readable: part of a PDU is there and the rest is on its way (a sender
        often writes a PDU's header and its body separately). The socket's low-water mark makes it
        readable only then, so this wakes when the bytes are in, not on a polling beat (a 0.2 ms
        sleep cost 0.25-0.4 ms per instance here, for two instances in three)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:  # no low-water mark here: a short sleep, as before
            time.sleep(0.0002)
            return False
        try:
            r, _, _ = select.select([self.sock], [], [], min(timeout, 0.5))
        finally:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return bool(r)


#: a receive buffer grown beyond this for one instance is not kept for the next
_KEEP_BUFFER = 64 * 1024 * 1024

#: called with (context_id, sop_class_uid, sop_instance_uid, dataset fragments); returns a status
StoreHandler = Callable[[int, str, str, list[memoryview]], int]


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
        message = bytearray(1 << 20)  # the dataset of the C-STORE being received; reused, grown as needed
        while not stop():
            if not self._idle_until_data(stop) or not self._next_is_store_request():
                return served
            try:  # from here on the message is being consumed: any failure leaves the association out of step
                cmd, cmd_cx, message, size = self._read_store_message(message)
            except SyncGetError as exc:
                exc.abort = True
                raise
            sop_class = _uid(cmd.get(_AFFECTED_SOP_CLASS))
            sop_instance = _uid(cmd.get(_AFFECTED_SOP_INSTANCE))
            status = on_store(cmd_cx, sop_class, sop_instance, [memoryview(message)[:size]])
            self.sock.sendall(store_response(cmd_cx, _us(cmd.get(_MESSAGE_ID)) or 0, sop_class, sop_instance, status))
            served += 1
            if len(message) > _KEEP_BUFFER:  # an exceptionally big instance: do not hold its memory
                message = bytearray(1 << 20)
            if after_response is not None:
                after_response()
        return served

    def _read_store_message(self, message: bytearray) -> tuple[dict[int, bytes], int, bytearray, int]:
        """One C-STORE-RQ: its command and its dataset, received straight into ``message`` (grown
        if needed) at consecutive offsets — one contiguous dataset with no joining copy and no
        buffer allocated per PDU (storescu sends a 512x512 image in ~7 PDUs). Returns (command,
        its context ID, the buffer, the dataset's length)."""
        cmd: dict[int, bytes] | None = None
        cmd_cx = 0
        size = 0
        finished = False
        while not finished:
            # no peek first: anything but P-DATA in the middle of a message (abort, release) ends
            # the exchange, and the association is aborted either way. The PDU header and its first
            # PDV item's header come in one read (a P-DATA-TF PDU holds at least one item).
            head = self._read_exact(12)
            if head[0] != 0x04:
                raise SyncGetError("peer ended the association during a C-STORE")
            (remaining,) = struct.unpack_from(">I", head, 2)
            item = memoryview(head)[6:]
            while True:
                (item_len,) = struct.unpack_from(">I", item, 0)
                context_id, control = item[4], item[5]
                n = item_len - 2
                if n < 0 or item_len + 4 > remaining:
                    raise SyncGetError("P-DATA-TF PDU not understood", abort=True)
                remaining -= 4 + item_len
                if control & 0x01:
                    cmd, cmd_cx = parse_command(self._read_exact(n)), context_id
                else:
                    if size + n > len(message):
                        grown = bytearray(max(2 * len(message), size + n))
                        grown[:size] = memoryview(message)[:size]
                        message = grown
                    self._fill(memoryview(message)[size:size + n])
                    size += n
                    finished = bool(control & 0x02)
                if remaining == 0:
                    break
                if finished or remaining < 6:  # the next message shares this PDU: not ours to split
                    raise SyncGetError("P-DATA-TF PDU not understood", abort=True)
                item = memoryview(self._read_exact(6))
        if cmd is None:
            raise SyncGetError("dataset without a command", abort=True)
        return cmd, cmd_cx, message, size

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
