"""C-STORE of files on the lean requestor (:mod:`.dimse`): `pacs store`, the demo's upload and the
pipeline's results go this way (TLS nodes still go through pynetdicom).

Why not pynetdicom's ``send_c_store``: it parks its association reactor around each request with a
flag that the reactor thread sets only when it next runs. On a loaded machine the next request can
start before the reactor has run since the previous one resumed it; the reactor then takes that
request's C-STORE-RSP off the queue ("Received unexpected C-STORE service message") and the request
waits for it until the DIMSE timeout. Seen here: the demo's upload of 293 images into the embedded PACS
stopped after 138-216 images in about one run in two while other work loaded both cores. The lean
requestor has no reactor: one thread sends a request and reads its response.

Each file goes as it is stored (the bytes after its File Meta Information) over a context with the
file's own transfer syntax; a peer that refuses that syntax gets the dataset re-encoded (compressed
pixel data decompressed) in Explicit or Implicit VR Little Endian, whichever it accepts.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Callable, Sequence

from . import dimse
from .errors import PacsConnectionError, PacsOperationError, PacsTimeoutError, association_error

#: explicit VR little endian VRs with a 4-byte length (and 2 reserved bytes) in the File Meta group
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_UNCOMPRESSED = (dimse.EXPLICIT_VR_LE, dimse.IMPLICIT_VR_LE)


def dataset_offset(head: bytes) -> int | None:
    """Where the dataset starts in a Part 10 file whose first bytes are ``head`` (preamble, "DICM",
    then the explicit VR little endian group 0002), or None when it is not laid out that way."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    off = 132
    while off + 8 <= len(head):
        group, _elem = struct.unpack_from("<HH", head, off)
        if group != 0x0002:
            return off
        vr = bytes(head[off + 4:off + 6])
        if vr in _LONG_VRS:
            if off + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, off + 8)
            off += 12 + length
        else:
            (length,) = struct.unpack_from("<H", head, off + 6)
            off += 8 + length
    return off if off == len(head) else None


def _reencoded(path: Path, transfer_syntax: str) -> bytes:
    """The dataset of ``path`` encoded in an uncompressed ``transfer_syntax`` (for a peer that does not
    take the file's own)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = transfer_syntax == dimse.IMPLICIT_VR_LE
    write_dataset(buf, ds)
    return buf.getvalue()


def c_store(assoc: dimse.Association, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> int:
    """One C-STORE request and its response; returns the status."""
    msg_id = assoc.next_message_id()
    assoc.send_message(context_id, dimse.encode_command([
        (dimse._AFFECTED_SOP_CLASS, dimse._ui(sop_class)),
        (dimse._COMMAND_FIELD, struct.pack("<H", dimse.C_STORE_RQ_FIELD)),
        (dimse._MESSAGE_ID, struct.pack("<H", msg_id)),
        (dimse._PRIORITY, struct.pack("<H", 0)),
        (dimse._DATASET_TYPE, struct.pack("<H", 0x0000)),  # a dataset follows
        (dimse._AFFECTED_SOP_INSTANCE, dimse._ui(sop_instance)),
    ]), dataset)
    _cx, cmd, _data = assoc.read_message()
    if dimse.us(cmd.get(dimse._COMMAND_FIELD)) != dimse.C_STORE_RSP_FIELD or \
            dimse.us(cmd.get(dimse._MESSAGE_ID_RESPONDED)) != msg_id:
        raise dimse.DimseError(f"{assoc.peer} answered a C-STORE with another message", "protocol")
    status = dimse.us(cmd.get(dimse._STATUS))
    return 0xC000 if status is None else status


def store_files(
    node: Any,
    settings: Any,
    items: Sequence[tuple[Path, str, str, str]],
    result: Any,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """C-STORE ``items`` [(path, SOP class, SOP instance, transfer syntax)] on one association,
    counting into ``result`` (a :class:`~MedImgAILib.pacs.client.StoreResult`)."""
    pairs = list(dict.fromkeys((cls, ts) for _, cls, _, ts in items))
    abstracts: list[tuple[str, list[str]]] = []
    for cls, ts in pairs:  # the file's own syntax alone, then the uncompressed ones as a fallback
        abstracts.append((cls, [ts]))
        abstracts.append((cls, [t for t in _UNCOMPRESSED if t != ts]))
    if len(abstracts) > dimse.MAX_CONTEXTS:
        raise PacsOperationError(f"{len(pairs)} SOP class / transfer syntax pairs in one send: "
                                 f"more than one association can carry ({dimse.MAX_CONTEXTS // 2})")
    t = settings.timeouts
    try:
        assoc = dimse.connect(node.host, node.port, settings.local_aet, node.aet, abstracts,
                              max_pdu=settings.max_pdu, connection_timeout=t.connection, acse_timeout=t.acse,
                              dimse_timeout=t.dimse, peer=str(node))
    except dimse.DimseError as exc:
        raise association_error(node, settings.local_aet, exc) from None
    # context ids follow the proposal (1, 3, 5, ...): pair i's own syntax 4i+1, its fallback 4i+3
    route: dict[tuple[str, str], tuple[int, str]] = {}
    for i, pair in enumerate(pairs):
        for cid in (4 * i + 1, 4 * i + 3):
            cx = assoc.contexts.get(cid)
            if cx is not None and cx.transfer_syntax:
                route[pair] = (cid, cx.transfer_syntax)
                break
    try:
        for n, (path, cls, sop, ts) in enumerate(items, 1):
            target = route.get((cls, ts))
            if target is None:
                result.failed += 1
                result.errors.append(f"{path.name}: {node} accepted no presentation context for SOP class {cls}")
                continue
            cid, accepted = target
            try:
                data = path.read_bytes()
                off = dataset_offset(data[:65536]) if accepted == ts else None
                payload = memoryview(data)[off:] if off is not None else _reencoded(path, accepted)
            except Exception as exc:  # noqa: BLE001 - an unreadable or undecodable file fails alone
                result.failed += 1
                result.errors.append(f"{path.name}: cannot be sent ({exc.__class__.__name__}: {exc})")
                continue
            try:
                status = c_store(assoc, cid, cls, sop, payload)
            except dimse.DimseError as exc:
                assoc.abort()
                if exc.kind == "timeout":
                    raise PacsTimeoutError(
                        f"{node} stopped answering C-STORE after {result.sent} of {len(items)} instances") from None
                raise PacsConnectionError(
                    f"{node}: association lost after {result.sent} of {len(items)} instances ({exc})") from None
            result.count(status, path.name)
            if on_progress:
                on_progress(n, len(items))
    finally:
        if not assoc.closed:
            assoc.release()
