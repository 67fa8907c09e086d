"""The local instance store: ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

Path components come only from UIDs that pass :func:`validate_uid` (digits and dots, at most 64
characters), so a crafted UID such as ``../../etc/x`` or ``1.2/../../x`` is refused before it can name a
path. Writes are durable: a temporary file in the target directory is written, fsynced, renamed over
the final name and the directory fsynced, so an instance is either complete on disk or absent.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from .errors import UnsafeUidError

log = logging.getLogger(__name__)

# PS3.5 9.1: components of digits, no leading zero unless the component is "0", separated by dots.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TMP_PREFIX = ".incoming-"
_TMP_COUNTER = itertools.count()


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.match(value) is not None


def validate_uid(value: object, keyword: str) -> str:
    """``value`` if it is a valid DICOM UID, else :class:`UnsafeUidError` naming the attribute."""
    text = str(value) if value is not None else ""
    if not is_valid_uid(text):
        shown = text[:80].encode("unicode_escape").decode("ascii")
        raise UnsafeUidError(f"{keyword} {shown!r} is not a valid DICOM UID; instance refused")
    return text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_filesystem(root: Path, paths: Iterable[Path] = ()) -> None:
    """Make everything written under ``root`` durable with one call: ``syncfs(2)`` on its filesystem
    (Linux), else an fsync of each path and its directory. Retrieval writes instances without a
    per-file fsync (two flushes per instance cost ~14 ms here) and calls this once before it reports
    the study complete."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    dirs = set()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs.add(Path(p).parent)
    for d in dirs:
        fsync_dir(d)


def header_of(encoded: bytes) -> Dataset:
    """The attributes before Pixel Data of Part 10 bytes (file meta included), values left raw until
    read: a fraction of a full decode of a 512x512 image."""
    return pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True, force=True)


_AFTER_SERIES_UID = 0x0020000E


def uids_of(encoded: bytes) -> Dataset:
    """Only the elements up to Series Instance UID (0020,000E) of Part 10 bytes: enough to name the
    file (Study/Series/SOP Instance UID) at a fraction of :func:`header_of`'s cost (retrieval does not
    keep a catalog of what it wrote)."""
    return read_partial(io.BytesIO(encoded), stop_when=lambda tag, vr, length: tag > _AFTER_SERIES_UID)


def _mkdirs_durable(root: Path, parts: Iterable[str]) -> Path:
    """Create root/part1/part2... and fsync each parent whose entry is new, so the new directory entry
    survives a crash (the file's own fsync does not persist its parents' entries)."""
    d = root
    for part in parts:
        child = d / part
        if not child.is_dir():
            child.mkdir(exist_ok=True)
            fsync_dir(d)
        d = child
    return d


def write_durably(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary name + rename. With ``durable`` the data and the
    directory entry are fsynced before returning (the listener's promise behind a success status)."""
    # pid + thread + counter is unique without a getrandom() call per instance (uuid4 cost ~1 ms here)
    tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{next(_TMP_COUNTER)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fdatasync(fd)  # data and size; the name is made durable by the directory fsync below
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


#: attributes kept per instance for grouping, C-FIND matching and the index
CATALOG_KEYWORDS: tuple[str, ...] = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SeriesDate", "BodyPartExamined",
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
)


@dataclass
class InstanceRecord:
    path: Path
    attrs: dict[str, str]
    transfer_syntax: str = ""

    @property
    def sop_uid(self) -> str:
        return self.attrs["SOPInstanceUID"]


def record_from_dataset(path: Path, ds: Dataset, transfer_syntax: str = "") -> InstanceRecord:
    attrs = {}
    for kw in CATALOG_KEYWORDS:
        value = ds.get(kw)
        if value is not None and value != "":
            attrs[kw] = str(value)
    if not transfer_syntax and getattr(ds, "file_meta", None) is not None:
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    return InstanceRecord(Path(path), attrs, transfer_syntax)


@dataclass
class InstanceStore:
    """The on-disk store plus an in-memory catalog of what it holds (rebuilt by :meth:`scan`)."""

    root: Path
    durable: bool = True
    _by_sop: dict[str, InstanceRecord] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _dirs: set[Path] = field(default_factory=set, repr=False)  # directories known to exist (durably)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths ----------------------------------------------------------------------------------
    def path_for(self, study_uid: object, series_uid: object, sop_uid: object) -> Path:
        parts = (
            validate_uid(study_uid, "StudyInstanceUID"),
            validate_uid(series_uid, "SeriesInstanceUID"),
            validate_uid(sop_uid, "SOPInstanceUID"),
        )
        # Belt and braces: a valid UID is digits and dots, never "/", "\\", "." or ".." alone.
        if any(os.sep in p or p in (".", "..") for p in parts):
            raise UnsafeUidError(f"UID {parts} would leave the store {self.root}")
        return self.root.joinpath(parts[0], parts[1], parts[2] + ".dcm")

    # -- writing --------------------------------------------------------------------------------
    def put(self, ds: Dataset, encoded: bytes, transfer_syntax: str = "", *, catalog: bool = True) -> InstanceRecord:
        """Store one encoded instance (Part 10 bytes, with file meta). Idempotent per SOP UID: a
        duplicate replaces the file atomically with the same name. ``catalog=False`` records only the
        UIDs (retrieval: converting the ~20 catalog attributes costs ~1 ms per instance)."""
        path = self.path_for(ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID"))
        if path.parent not in self._dirs:
            if self.durable:
                _mkdirs_durable(self.root, path.relative_to(self.root).parts[:-1])
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        write_durably(path, encoded, durable=self.durable)
        if catalog:
            rec = record_from_dataset(path, ds, transfer_syntax)
        else:
            rec = InstanceRecord(path, {"StudyInstanceUID": path.parent.parent.name,
                                        "SeriesInstanceUID": path.parent.name, "SOPInstanceUID": path.stem},
                                 transfer_syntax)
        with self._lock:
            self._by_sop[rec.sop_uid] = rec
        return rec

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # -- reading --------------------------------------------------------------------------------
    def scan(self) -> Iterator[tuple[InstanceRecord, Dataset]]:
        """Rebuild the catalog from disk (after a restart). Leftover temporary files are instances
        that were never acknowledged: they are removed. Yields each record with its header."""
        for tmp in self.root.glob(f"*/*/{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.root.glob("*/*/*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                log.warning("store: unreadable file %s skipped (%s)", path.name, exc.__class__.__name__)
                continue
            rec = record_from_dataset(path, ds)
            with self._lock:
                self._by_sop[rec.sop_uid] = rec
            yield rec, ds

    def records(self) -> list[InstanceRecord]:
        with self._lock:
            return list(self._by_sop.values())

    def get(self, sop_uid: str) -> InstanceRecord | None:
        with self._lock:
            return self._by_sop.get(sop_uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_sop)
