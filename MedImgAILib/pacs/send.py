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

from pathlib import Path
from typing import Any, Callable, Sequence

from . import dimse
from .errors import PacsConnectionError, PacsOperationError, PacsTimeoutError, association_error

_UNCOMPRESSED = (dimse.EXPLICIT_VR_LE, dimse.IMPLICIT_VR_LE)


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


def proposal(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """The presentation contexts for sending files of these (SOP class, transfer syntax) pairs: per
    pair, the file's own syntax alone (its bytes go as they are) and then the uncompressed syntaxes as
    a fallback for a peer that does not take it. Only the classes being sent: each extra context is
    negotiation time on every send. Context ids follow this order (1, 3, 5, ...): pair i's own syntax
    4i+1, its fallback 4i+3."""
    out: list[tuple[str, list[str]]] = []
    for cls, ts in pairs:
        out.append((cls, [ts]))
        out.append((cls, [t for t in _UNCOMPRESSED if t != ts]))
    if len(out) > dimse.MAX_CONTEXTS:
        raise PacsOperationError(f"{len(pairs)} SOP class / transfer syntax pairs in one send: "
                                 f"more than one association can carry ({dimse.MAX_CONTEXTS // 2})")
    return out


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
    abstracts = proposal(pairs)
    t = settings.timeouts
    try:
        assoc = dimse.connect(node.host, node.port, settings.local_aet, node.aet, abstracts,
                              max_pdu=settings.max_pdu, connection_timeout=t.connection, acse_timeout=t.acse,
                              dimse_timeout=t.dimse, peer=str(node))
    except dimse.DimseError as exc:
        raise association_error(node, settings.local_aet, exc) from None
    # context ids as :func:`proposal` lays them out
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
                result.errors.append(f"{path.name}: {node} accepted no presentation context for {_class_name(cls)}")
                continue
            cid, accepted = target
            try:
                data = path.read_bytes()
                off = dimse.dataset_offset(data[:65536]) if accepted == ts else None
                payload = memoryview(data)[off:] if off is not None else _reencoded(path, accepted)
            except Exception as exc:  # noqa: BLE001 - an unreadable or undecodable file fails alone
                result.failed += 1
                result.errors.append(f"{path.name}: cannot be sent ({exc.__class__.__name__}: {exc})")
                continue
            try:
                status = dimse.c_store(assoc, cid, cls, sop, payload)
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


def _class_name(sop_class: str) -> str:
    """"Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7)": what a PACS administrator
    configures by name (pydicom's UID dictionary is loaded here only, on this error)."""
    from pydicom.uid import UID

    name = UID(sop_class).name
    return f"{name} ({sop_class})" if name and name != sop_class else f"SOP class {sop_class}"
