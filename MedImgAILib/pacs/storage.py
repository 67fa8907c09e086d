"""The local instance store: ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

Path components come only from UIDs that pass :func:`validate_uid` (digits and dots, at most 64
characters), so a crafted UID such as ``../../etc/x`` or ``1.2/../../x`` is refused before it can name a
path. Writes are durable: a temporary file in the target directory is written, fsynced, renamed over
the final name and the directory fsynced, so an instance is either complete on disk or absent. (A
retrieval, which flushes once at the end, writes unnamed files instead: :class:`SpareFiles`.)
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import re
import struct
import threading
import zlib
from collections import deque
from pathlib import Path
from ..fileio import flush_filesystem, fsync_dir, libc_handle  # noqa: F401 - the pacs modules take them from here
from .errors import UnsafeUidError

TYPE_CHECKING = False  # typing is not imported at run time (start-up of `pacs get`, see docs/pacs.md)
if TYPE_CHECKING:  # pydicom is imported where it is used: `pacs get` never needs it (start-up time)
    from typing import Any, Callable, Iterable, Iterator, Sequence

    from pydicom.dataset import Dataset


def _log() -> Any:
    """This module's logger, ``logging`` imported on first use: `pacs get` writes through this
    module and never logs, and its start-up does not import ``logging`` (cli.configure_logging)."""
    import logging

    return logging.getLogger(__name__)


# PS3.5 9.1: components of digits, no leading zero unless the component is "0", separated by dots.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TMP_PREFIX = ".incoming-"
_TMP_COUNTER = itertools.count()


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.match(value) is not None


def _inside_store(root: Path, names: Sequence[str]) -> None:
    # Belt and braces: a valid UID is digits and dots, never "/", "\\", "." or ".." alone.
    if any(os.sep in n or n in (".", "..") for n in names):
        raise UnsafeUidError(f"UID {tuple(names)} would leave the store {root}")


def validate_uid(value: object, keyword: str) -> str:
    """``value`` if it is a valid DICOM UID, else :class:`UnsafeUidError` naming the attribute."""
    text = str(value) if value is not None else ""
    if not is_valid_uid(text):
        shown = text[:80].encode("unicode_escape").decode("ascii")
        raise UnsafeUidError(f"{keyword} {shown!r} is not a valid DICOM UID; instance refused")
    return text


class Writeback:
    """Starts writing files back to disk from a background thread as they are named to it, so that
    the one flush at the end of a retrieval (:func:`flush_filesystem`) has little left to wait for
    (~90 ms -> a few ms for 100 MB here). ``POSIX_FADV_DONTNEED`` starts asynchronous writeback of
    a file's dirty pages and returns; done on the receiving thread it cost more than it saved. Files
    are handed over in batches: waking the thread for each one cost ~0.1 ms."""

    BATCH = 16

    def __init__(self) -> None:
        import queue

        self._queue: queue.SimpleQueue[list[Path] | None] = queue.SimpleQueue()
        self._batch: list[Path] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def add(self, path: Path) -> None:
        with self._lock:
            self._batch.append(path)
            if len(self._batch) < self.BATCH:
                return
            batch, self._batch = self._batch, []
        self._queue.put(batch)

    def _run(self) -> None:
        try:  # the final flush needs ctypes: load it now, while the retrieval waits on the network
            libc_handle()
        except OSError:
            pass
        while (batch := self._queue.get()) is not None:
            for path in batch:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue  # replaced or removed meanwhile: the final flush covers it
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)

    def close(self) -> None:
        """Hand over what is left (the caller's final flush covers it anyway) and stop."""
        with self._lock:
            batch, self._batch = self._batch, []
        if batch:
            self._queue.put(batch)
        self._queue.put(None)
        self._thread.join()


class SpareFiles:
    """Unnamed files (``O_TMPFILE``) made ahead by a background thread in the store's filesystem.

    Why: a retrieval acknowledges each instance once its file is written, so everything between the
    last byte received and the response is on the critical path, and the PACS sends nothing
    meanwhile. Creating a file (allocating its inode) was the largest part of that: 0.3-1.5 ms of
    kernel CPU per file here, where ext4 (without a journal on this machine) skips every inode
    deleted in the last minute when it allocates one, against ~0.2 ms to write 0.5 MB. Made ahead,
    the receiving thread only writes, then gives the file its name with one ``linkat``.

    A file from here is complete before it has a name at all: nothing partial is ever visible under
    any name, and a crash leaves nothing behind (unnamed inodes are freed with the process), unlike
    a temp name + rename. Where the filesystem cannot make unnamed files or ``/proc`` is missing,
    :meth:`start` returns None and the store writes via a temp name as before.

    No more files are made than will be used: ``first`` before the caller knows how many instances
    to expect, then up to the number given to :meth:`expect`. A file made and not used is one more
    inode deleted, which is what makes creating files slow here (and the thread making them competes
    for the CPU with the PACS when both cores are busy)."""

    def __init__(self, directory: Path, ahead: int, first: int, proc_fd: int) -> None:
        self.directory = directory
        self._proc_fd = proc_fd  # /proc/self/fd: names an unnamed file for linkat
        self._fds: deque[int] = deque()  # append/popleft are atomic: take() locks only to notify
        self._ahead = ahead
        self._total = first  # files to make in all (raised by expect())
        self._made = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="spare-files", daemon=True)

    @classmethod
    def start(cls, directory: Path, ahead: int = 16, first: int = 4) -> "SpareFiles | None":
        """A running pool in ``directory``, or None where unnamed files cannot be made and linked
        there (tried once: no ``O_TMPFILE`` on this filesystem or kernel, no ``/proc``, or a sandbox
        that refuses ``linkat`` through it)."""
        if not getattr(os, "O_TMPFILE", 0):
            return None
        try:
            proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        pool = cls(directory, ahead, first, proc_fd)
        probe = directory / f"{TMP_PREFIX}probe-{os.getpid()}-{next(_TMP_COUNTER)}"
        try:
            fd = pool.make()
            try:
                pool.link(fd, probe)
            finally:
                os.close(fd)  # once linked and unlinked, a file from O_TMPFILE cannot be linked again
            os.unlink(probe)
        except OSError:
            os.close(proc_fd)
            return None
        pool._thread.start()
        return pool

    def make(self) -> int:
        return os.open(self.directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._stop and (len(self._fds) >= self._ahead or self._made >= self._total):
                    cond.wait()
                if self._stop:
                    return
                self._made += 1
            try:
                self._fds.append(self.make())
            except OSError:  # e.g. out of inodes or descriptors: take() makes them inline from now on
                return

    def expect(self, n: int) -> None:
        """``n`` files will be needed in all (those made so far included)."""
        with self._cond:
            self._total = max(n, self._made)
            self._cond.notify()

    def take(self) -> int:
        """A descriptor of an empty unnamed file (made now if none is ready)."""
        try:
            fd = self._fds.popleft()
        except IndexError:
            with self._cond:
                self._made += 1  # counts against the total: the thread then makes one fewer
            return self.make()
        if len(self._fds) <= self._ahead // 2:
            # the thread refills from half-empty, in a burst: waking it for every file taken cost
            # the receiving thread ~20-30 us per instance (a futex wake, an IPI to the other CPU)
            with self._cond:
                self._cond.notify()
        return fd

    def link(self, fd: int, path: Path) -> None:
        """Give the written file ``fd`` the name ``path``; an existing file of that name (a retrieval
        run again) is replaced atomically, through a temp name. ``OSError`` EXDEV where ``path`` is
        on another filesystem than the pool's directory (the caller then writes it the usual way)."""
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N links the open file itself; os.link uses
        # linkat only when given a dir_fd (else link(2), which cannot follow that link)
        try:
            os.link(str(fd), path, src_dir_fd=self._proc_fd, follow_symlinks=True)
        except FileExistsError:
            tmp = _tmp_name(path)
            os.link(str(fd), tmp, src_dir_fd=self._proc_fd, follow_symlinks=True)
            os.replace(tmp, path)

    def close(self) -> None:
        """Stop making files; the unused ones vanish with their descriptors."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        while self._fds:
            os.close(self._fds.popleft())
        os.close(self._proc_fd)


def write_unnamed(spares: SpareFiles, path: Path, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """``parts`` written to a spare unnamed file, which then gets the name ``path`` (no flush)."""
    fd = spares.take()
    try:
        _write_all(fd, parts)
        try:
            spares.link(fd, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # a study folder on another filesystem (a symlink): see below
                raise
            write_durably(path, parts, durable=False)
    finally:
        os.close(fd)


def header_of(encoded: bytes) -> Dataset:
    """The attributes before Pixel Data of Part 10 bytes (file meta included), values left raw until
    read: a fraction of a full decode of a 512x512 image."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True, force=True)


_AFTER_SERIES_UID = 0x0020000E


def uids_of(encoded: bytes) -> Dataset:
    """Only the elements up to Series Instance UID (0020,000E) of Part 10 bytes: enough to name the
    file (Study/Series/SOP Instance UID) at a fraction of :func:`header_of`'s cost (retrieval does not
    keep a catalog of what it wrote)."""
    from pydicom.filereader import read_partial

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


def _tmp_name(path: Path) -> Path:
    # pid + thread + counter is unique without a getrandom() call per instance (uuid4 cost ~1 ms here)
    return path.parent / f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{next(_TMP_COUNTER)}"


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write every buffer, in order, with as few ``writev`` calls as the kernel allows (no join: a
    received image is written from the buffers it arrived in)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:1024])  # IOV_MAX
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def write_durably(
    path: Path, data: bytes | Sequence[bytes | bytearray | memoryview], *, durable: bool = True
) -> None:
    """Write ``data`` (bytes, or a list of buffers written in order) to ``path`` via a temporary
    name + rename. With ``durable`` the data and the directory entry are fsynced before returning."""
    write_via_temp(path, lambda fd: _write_all(fd, [data] if isinstance(data, (bytes, bytearray, memoryview)) else data),
                   durable=durable)


def write_via_temp(path: Path, fill: Callable[[int], None], *, durable: bool = True) -> None:
    """``fill`` writes the file's content to the descriptor of a temporary name, which is then renamed
    to ``path`` (removed if ``fill`` fails). With ``durable`` the data and the directory entry are
    flushed before returning."""
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fill(fd)
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


# --- write-ahead journal -------------------------------------------------------------------------
JOURNAL_NAME = ".journal"
_J_MAGIC = b"MEDIMGAI-WAL-1\n\0"
_J_HEAD = 4096  # the header block; records follow
_R_MAGIC = 0x4D495752  # "MIWR"
_R_HEAD = struct.Struct("<IQHQI")  # magic, generation, len(relpath), len(data), crc32(relpath + data)


def _crc32_function() -> Callable[..., int]:
    """ISA-L's CRC-32: the same values as zlib's, ~4x faster here (0.04 instead of 0.15 ms for a
    512x512 CT, on the acknowledgement path); zlib's where isal is missing. Loaded by the journal
    only (`pacs get` never imports isal)."""
    try:
        from isal.isal_zlib import crc32
    except ImportError:  # pragma: no cover - isal is a dependency (fileio.save_nifti)
        return zlib.crc32
    return crc32


class Journal:
    """Append-only write-ahead journal that makes a received instance durable with ONE flush.

    The listener's promise is "on disk before the success status". Written directly that costs two
    flushes per instance (the file's data, then its directory entry: ~8-15 ms on this disk). Here the
    instance's bytes are appended to this journal and ``fdatasync``ed (one flush, and a cheap one: the
    journal file is written full of zeros once when created, so an append changes no file size and no
    block allocation, and the flush carries no metadata); the file is then placed in the store with a
    plain write + rename, no flush. Everything placed becomes durable at the next *checkpoint* (one
    ``syncfs`` of the store's filesystem, when the journal is full and when the listener stops), after
    which the journal starts over under a new generation number. After a crash, :meth:`replay`
    rewrites every record of the current generation into the store (an acknowledged instance whose
    placed file was lost with the page cache comes back), flushes, and starts a new generation.

    Records are ``header | relpath | data`` with a CRC; replay stops at the first record that is not
    of the current generation or fails its CRC. Appends copy into the journal under a lock, in order,
    and flush outside it (concurrent associations share flushes), so when a record's flush returns
    every record before it is durable too: a torn record can only follow acknowledged ones.
    """

    def __init__(self, root: Path, capacity: int = 256 * 1024 * 1024) -> None:
        self.root = root
        self.path = root / JOURNAL_NAME
        self.capacity = max(capacity, _J_HEAD + 1024 * 1024)
        self._cond = threading.Condition()
        self._pending = 0  # records appended whose file is not yet placed
        self._unplaced = 0  # records whose file could not be placed: only the journal holds them
        self._checkpointing = False
        #: called (without blocking) when a checkpoint has to wait for placements: the placer hurries
        self.wake: Callable[[], None] | None = None
        new = not self.path.exists() or self.path.stat().st_size < self.capacity
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if new:
            try:
                self._preallocate()
            except OSError:
                os.close(self.fd)
                raise
        self.capacity = max(self.capacity, os.fstat(self.fd).st_size)
        self.generation = self._read_generation()
        self.offset = _J_HEAD
        self._crc = _crc32_function()

    # -- file -----------------------------------------------------------------------------------
    def _preallocate(self) -> None:
        """Write the whole journal once (zeros), so later appends only overwrite allocated blocks."""
        size = os.fstat(self.fd).st_size
        chunk = b"\0" * (1024 * 1024)
        while size < self.capacity:
            n = os.pwrite(self.fd, chunk[: self.capacity - size], size)
            size += n
        os.fsync(self.fd)
        fsync_dir(self.root)

    def _read_generation(self) -> int:
        head = os.pread(self.fd, len(_J_MAGIC) + 8, 0)
        if head[: len(_J_MAGIC)] != _J_MAGIC:
            self._write_generation(1)
            return 1
        return struct.unpack_from("<Q", head, len(_J_MAGIC))[0]

    def _write_generation(self, generation: int) -> None:
        os.pwrite(self.fd, _J_MAGIC + struct.pack("<Q", generation), 0)
        os.fdatasync(self.fd)
        self.generation = generation

    def close(self) -> None:
        """Checkpoint (so that a clean restart replays nothing) and close."""
        if self.fd >= 0:
            try:
                self.checkpoint()
            except OSError as exc:  # records kept: the next start replays them
                _log().error("journal: %s", exc.strerror or exc)
            os.close(self.fd)
            self.fd = -1

    # -- appending ------------------------------------------------------------------------------
    def fits(self, relpath: str, data: bytes | int) -> bool:
        n = data if isinstance(data, int) else len(data)
        return _J_HEAD + _R_HEAD.size + len(relpath.encode()) + n <= self.capacity

    def append(self, relpath: str, data: bytes | Sequence[bytes | bytearray | memoryview]) -> int:
        """Make ``data`` (the instance at ``root/relpath``: bytes, or a list of buffers that are its
        bytes in order) durable in the journal. The caller places the file and then calls
        :meth:`placed` (also when placing failed). Returns the offset of the data in the journal
        file (see :meth:`copy_out`)."""
        rel = relpath.encode()
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        crc = self._crc(rel)
        ndata = 0
        for part in parts:
            crc = self._crc(part, crc)
            ndata += len(part)
        size = _R_HEAD.size + len(rel) + ndata
        with self._cond:
            while self._checkpointing:
                self._cond.wait()
            if self.offset + size > self.capacity:
                self._checkpoint_locked()
            head = _R_HEAD.pack(_R_MAGIC, self.generation, len(rel), ndata, crc)
            written = os.pwritev(self.fd, [head, rel, *parts], self.offset)
            if written != size:  # a short write (disk full...): the record must not count
                raise OSError(errno.ENOSPC, f"journal: wrote {written} of {size} bytes")
            data_offset = self.offset + _R_HEAD.size + len(rel)
            self.offset += size
            self._pending += 1
        try:
            os.fdatasync(self.fd)
        except BaseException:
            self.placed()
            raise
        return data_offset

    def copy_out(self, offset: int, length: int, fd: int) -> None:
        """Write ``length`` bytes of the journal from ``offset`` to ``fd`` (in the kernel where it
        can: the placer never holds the instance in memory)."""
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(self.fd, fd, length - done, offset + done)
            except OSError:  # not supported between these files: through user space
                n = os.write(fd, os.pread(self.fd, min(length - done, 1 << 22), offset + done))
            if n <= 0:
                raise OSError(errno.EIO, "journal: short copy")
            done += n

    def placed(self, ok: bool = True) -> None:
        """The file of an appended record is in place (``ok``), or could not be placed: then the
        journal keeps every record until a restart replays them (no checkpoint, see below)."""
        with self._cond:
            self._pending -= 1
            if not ok:
                self._unplaced += 1
            self._cond.notify_all()

    # -- checkpoint and replay ------------------------------------------------------------------
    def checkpoint(self) -> None:
        with self._cond:
            while self._checkpointing:
                self._cond.wait()
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        """Called with the lock held: wait until every appended record is placed, flush the store's
        filesystem, and start a new generation (older records are then ignored)."""
        self._checkpointing = True
        try:
            if self._pending and self.wake is not None:
                self.wake()
            while self._pending:
                self._cond.wait()
            if self._unplaced:  # never drop the only copy of an acknowledged instance
                raise OSError(errno.EIO, f"write-ahead journal holds {self._unplaced} acknowledged instance(s) "
                              "that could not be placed in the store (disk full?); restart the listener to "
                              "replay them")
            if self.offset > _J_HEAD:
                flush_filesystem(self.root)
                self._write_generation(self.generation + 1)
            self.offset = _J_HEAD
        finally:
            self._checkpointing = False
            self._cond.notify_all()

    def records(self) -> Iterator[tuple[str, bytes]]:
        """The (relpath, data) records of the current generation, in order."""
        off = _J_HEAD
        while off + _R_HEAD.size <= self.capacity:
            magic, gen, nrel, ndata, crc = _R_HEAD.unpack(os.pread(self.fd, _R_HEAD.size, off))
            end = off + _R_HEAD.size + nrel + ndata
            if magic != _R_MAGIC or gen != self.generation or end > self.capacity:
                return
            body = os.pread(self.fd, nrel + ndata, off + _R_HEAD.size)
            if len(body) != nrel + ndata or self._crc(body) != crc:
                return  # torn: never acknowledged
            yield body[:nrel].decode("ascii", "replace"), body[nrel:]
            off = end

    def replay(self, store: "InstanceStore") -> int:
        """Rewrite every journaled instance into the store, flush, start a new generation."""
        n = 0
        for relpath, data in self.records():
            parts = relpath.split("/")
            try:
                if len(parts) != 3 or not parts[2].endswith(".dcm"):
                    raise UnsafeUidError(f"journal record {relpath!r} is not study/series/sop.dcm")
                path = store.path_for(parts[0], parts[1], parts[2][:-4])
                path.parent.mkdir(parents=True, exist_ok=True)
                write_durably(path, data, durable=False)
                n += 1
            except (UnsafeUidError, OSError) as exc:
                _log().error("journal: record not restored (%s)", exc)
        with self._cond:
            if n:
                _log().info("journal: %d instance(s) restored after an unclean stop", n)
            self.offset = _J_HEAD + 1  # force the flush + new generation
            self._checkpoint_locked()
        return n


#: attributes kept per instance for grouping, C-FIND matching and the index
CATALOG_KEYWORDS: tuple[str, ...] = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SeriesDate", "BodyPartExamined",
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
)


class InstanceRecord:
    # (plain classes here, not dataclasses: `pacs get` imports this module, and ``dataclasses``
    # brings ``inspect`` in: ~10 ms of start-up with the other classes on that path)
    __slots__ = ("path", "attrs", "transfer_syntax")

    def __init__(self, path: Path, attrs: dict[str, str], transfer_syntax: str = "") -> None:
        self.path = path
        self.attrs = attrs
        self.transfer_syntax = transfer_syntax

    def __repr__(self) -> str:
        return f"InstanceRecord({self.path!s}, {len(self.attrs)} attributes, {self.transfer_syntax!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InstanceRecord):
            return NotImplemented
        return (self.path, self.attrs, self.transfer_syntax) == (other.path, other.attrs, other.transfer_syntax)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

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


class InstanceStore:
    """The on-disk store plus an in-memory catalog of what it holds (rebuilt by :meth:`scan`)."""

    def __init__(self, root: Path | str, durable: bool = True, journal: Journal | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.durable = durable
        #: durability through a write-ahead :class:`Journal` (one flush per instance) instead of two
        #: flushes per file; see :meth:`open_journal`
        self.journal = journal
        self._by_sop: dict[str, InstanceRecord] = {}
        self._lock = threading.Lock()
        self._dirs: set[Path] = set()  # directories known to exist (durably)
        #: (study, series) UIDs as given -> their folder, validated: a retrieval names 200 files in
        #: one folder, and validating the two UIDs and joining them again cost ~10-20 us per file
        self._folders: dict[tuple[object, object], Path] = {}
        self._made: set[Path] = set()  # directories made (durable at a checkpoint)
        self._spares: SpareFiles | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"InstanceStore(root={self.root!s}, durable={self.durable})"

    # -- paths ----------------------------------------------------------------------------------
    def path_for(self, study_uid: object, series_uid: object, sop_uid: object) -> Path:
        # only text is remembered: a multi-valued element (a list, unhashable) is refused below
        key = (study_uid, series_uid) if isinstance(study_uid, str) and isinstance(series_uid, str) else None
        folder = None if key is None else self._folders.get(key)
        if folder is None:
            study = validate_uid(study_uid, "StudyInstanceUID")
            series = validate_uid(series_uid, "SeriesInstanceUID")
            _inside_store(self.root, (study, series))
            folder = self.root.joinpath(study, series)
            if key is not None and len(self._folders) < 4096:
                self._folders[key] = folder
        sop = validate_uid(sop_uid, "SOPInstanceUID")
        _inside_store(self.root, (sop,))
        return folder / (sop + ".dcm")

    # -- writing --------------------------------------------------------------------------------
    def put(self, ds: Dataset, encoded: bytes, transfer_syntax: str = "", *, catalog: bool = True) -> InstanceRecord:
        """Store one encoded instance (Part 10 bytes, with file meta). Idempotent per SOP UID: a
        duplicate replaces the file atomically with the same name. ``catalog=False`` records only the
        UIDs (retrieval: converting the ~20 catalog attributes costs ~1 ms per instance)."""
        path = self.path_for(ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID"))
        if self.make_durable(path, [encoded]) is not None:
            self.place(path, [encoded])
        return self._record(path, ds, transfer_syntax, catalog)

    def make_durable(self, path: Path, parts: Sequence[bytes | bytearray | memoryview]) -> int | None:
        """Phase 1 of storing an instance, what must happen before its success status: make its
        bytes (``parts``, in order) durable. With the journal: one append + flush; returns the
        offset of the bytes in the journal, and the caller must then :meth:`place` the file (after
        the status has gone: a crash before that is repaired by the journal's replay). Without (no
        journal, an instance too big for it, a non-durable store): the file itself, with two
        flushes when durable; returns None."""
        journal = self.journal
        if self.durable and journal is not None:
            if os.fstat(journal.fd).st_nlink == 0:  # removed under us: a flush into it keeps nothing
                raise OSError(errno.ENOENT, f"the store's journal {journal.path} was removed; restart the listener")
            relpath = self._relpath(path)
            if journal.fits(relpath, sum(len(p) for p in parts)):
                return journal.append(relpath, parts)
        if path.parent not in self._dirs:
            if self.durable:
                _mkdirs_durable(self.root, path.relative_to(self.root).parts[:-1])
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        write_durably(path, parts, durable=self.durable)
        return None

    def place(self, path: Path, parts: Sequence[bytes | bytearray | memoryview] | tuple[int, int]) -> None:
        """Phase 2 for an instance :meth:`make_durable` journaled: its file (temp name + rename, no
        flush: it and its new directories become durable at the journal's next checkpoint), from
        ``parts`` or from the journal itself (``(offset, length)``, copied in the kernel)."""
        journal = self.journal
        try:
            if path.parent not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            try:
                self._write_placed(path, parts)
            except FileNotFoundError:  # its directory was removed meanwhile (a study deleted)
                self._made.discard(path.parent)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._write_placed(path, parts)
        except BaseException:
            if journal is not None:
                journal.placed(ok=False)
            raise
        if journal is not None:
            journal.placed()

    def _write_placed(self, path: Path, parts: Any) -> None:
        if isinstance(parts, tuple) and len(parts) == 2 and isinstance(parts[0], int):
            assert self.journal is not None
            offset, length = parts
            journal = self.journal
            write_via_temp(path, lambda fd: journal.copy_out(offset, length, fd), durable=False)
        else:
            write_durably(path, parts, durable=False)

    def put_parts(self, uids: Sequence[object], parts: Sequence[bytes | bytearray | memoryview]) -> Path:
        """Store one instance given its (Study, Series, SOP Instance) UIDs and its Part 10 bytes as
        a list of buffers, without a flush and without a catalog entry (retrieval: the caller flushes
        the filesystem once at the end). Idempotent per SOP UID, like :meth:`put`."""
        path = self.path_for(*uids)
        self.put_parts_at(path, parts)
        return path

    def put_parts_at(self, path: Path, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """:meth:`put_parts` for a ``path`` that :meth:`path_for` gave (UIDs already validated)."""
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        try:
            self._write_file(path, parts)
        except FileNotFoundError:  # its directory was removed meanwhile
            self._dirs.discard(path.parent)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_file(path, parts)

    def _write_file(self, path: Path, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        if self._spares is None:
            write_durably(path, parts, durable=False)
        else:
            write_unnamed(self._spares, path, parts)

    def use_spare_files(self, ahead: int = 16) -> bool:
        """Write :meth:`put_parts` files through :class:`SpareFiles` made ahead (a retrieval: no
        flush per file). False where the filesystem cannot; :meth:`close` stops the pool."""
        if self._spares is None:
            self._spares = SpareFiles.start(self.root, ahead)
        return self._spares is not None

    def expect_files(self, n: int) -> None:
        """``n`` instances are expected: the spare files (if used) stop at that many."""
        if self._spares is not None:
            self._spares.expect(n)

    def _relpath(self, path: Path) -> str:
        return "/".join(path.relative_to(self.root).parts)

    def _record(self, path: Path, ds: Dataset, transfer_syntax: str, catalog: bool) -> InstanceRecord:
        if catalog:
            rec = record_from_dataset(path, ds, transfer_syntax)
        else:
            rec = InstanceRecord(path, {"StudyInstanceUID": path.parent.parent.name,
                                        "SeriesInstanceUID": path.parent.name, "SOPInstanceUID": path.stem},
                                 transfer_syntax)
        with self._lock:
            self._by_sop[rec.sop_uid] = rec
        return rec

    def catalog(self, path: Path, ds: Dataset, transfer_syntax: str = "") -> InstanceRecord:
        """Record an instance already stored with ``put(catalog=False)`` with all its catalog attributes."""
        rec = record_from_dataset(path, ds, transfer_syntax)
        with self._lock:
            self._by_sop[rec.sop_uid] = rec
        return rec

    def open_journal(self, capacity: int = 256 * 1024 * 1024) -> int:
        """Use a write-ahead journal in ``root/.journal`` from now on, first restoring what a crash
        may have left only in it. Returns the number of instances restored."""
        if self.journal is None:
            fresh = not (self.root / JOURNAL_NAME).exists()
            try:
                self.journal = Journal(self.root, capacity)
            except OSError as exc:  # e.g. no room for it: every instance then gets two flushes instead
                _log().warning("store: no write-ahead journal (%s); writing each instance with two flushes",
                            exc.strerror or exc)
                if fresh:
                    (self.root / JOURNAL_NAME).unlink(missing_ok=True)
                return 0
        return self.journal.replay(self)

    def close(self) -> None:
        """Checkpoint and close the journal, if any (everything placed is then durable); stop
        making spare files."""
        if self._spares is not None:
            self._spares.close()
            self._spares = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)  # what shutil.disk_usage gives, without importing shutil (start-up)
        return st.f_bavail * st.f_frsize

    # -- reading --------------------------------------------------------------------------------
    def scan(self) -> Iterator[tuple[InstanceRecord, Dataset]]:
        """Rebuild the catalog from disk (after a restart). Leftover temporary files are instances
        that were never acknowledged: they are removed. Yields each record with its header."""
        import pydicom
        from pydicom.errors import InvalidDicomError

        for tmp in self.root.glob(f"*/*/{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.root.glob("*/*/*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                _log().warning("store: unreadable file %s skipped (%s)", path.name, exc.__class__.__name__)
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
