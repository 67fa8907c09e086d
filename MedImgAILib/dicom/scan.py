"""Find DICOM image series in a folder tree.

Header-only reads (``stop_before_pixels``): every file is opened once, its header parsed, and the
position of its Pixel Data element remembered, so that loading can later read the pixel bytes straight
into the volume without parsing the file again. File names do not matter (no extension needed); a
DICOMDIR is recognised and skipped (the files it points to are found by walking the tree anyway);
anything that is not DICOM is skipped with a note saying why.

Grouping: by SeriesInstanceUID, then split into parts whose slices share orientation, matrix size and
pixel spacing, because only such slices can form one regular grid. A split is reported on each part.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import DicomInputError, MalformedDicomError, NoSeriesFoundError
from .metadata import SeriesMetadata, extract_metadata

#: SOP classes whose objects are not images to stack into a volume (they reference images instead)
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection",
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR)",
}
log = logging.getLogger(__name__)
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

#: transfer syntaxes whose Pixel Data bytes are native little-endian and can be read in place
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass
class SliceHeader:
    """One 2D frame: a single-frame instance, or frame ``frame_index`` of a multi-frame instance."""

    path: str
    sop_instance_uid: str
    frame_index: int  # 0-based within the instance
    instance_number: int | None
    position_lps: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None  # row cosines then column cosines (6)
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    rows: int
    columns: int
    slope: float
    intercept: float
    slice_thickness: float | None = None


@dataclass
class InstanceHeader:
    """What loading needs from one file, read without its pixels."""

    path: str
    #: header values: a pydicom Dataset without Pixel Data, or a FastHeader (the common fast path)
    header: Any
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    number_of_frames: int
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    photometric: str
    #: byte offset of the Pixel Data value in the file when it can be read in place, else None
    pixel_value_offset: int | None
    pixel_value_length: int | None
    has_pixel_data: bool
    file_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def native(self) -> bool:
        return (
            self.transfer_syntax_uid in _NATIVE_LE
            and self.pixel_value_offset is not None
            and self.pixel_value_length not in (None, 0xFFFFFFFF)
            and self.bits_allocated in (8, 16, 32)
            and self.samples_per_pixel == 1
        )

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * (self.bits_allocated // 8)

    @property
    def truncated(self) -> bool:
        """Pixel Data shorter than its length field, or than Rows x Columns x frames needs."""
        if self.pixel_value_offset is None or self.pixel_value_length in (None, 0xFFFFFFFF):
            return False  # encapsulated (compressed): the decoder reports a short stream
        if self.file_size - self.pixel_value_offset < self.pixel_value_length:
            return True
        return self.native and self.pixel_value_length < self.frame_bytes * self.number_of_frames

    def slices(self) -> list[SliceHeader]:
        return _slices_of(self)

    @property
    def dataset(self) -> Any:
        """The header as a pydicom Dataset (read on first use when the fast path was taken)."""
        from .fastheader import FastHeader

        if isinstance(self.header, FastHeader):
            import pydicom

            self.header = pydicom.dcmread(self.path, stop_before_pixels=True)
        return self.header

    def get(self, keyword: str) -> Any:
        return _get(self.header, keyword)

    def text(self, keyword: str) -> str | None:
        """A decimal string value as the file writes it (None when absent or not read as text)."""
        from .fastheader import FastHeader

        if isinstance(self.header, FastHeader):
            return self.header.texts.get(keyword)
        try:
            elem = self.header.get_item(_tag_vr(keyword)[0])
        except KeyError:
            return None
        if elem is None:
            return None
        if getattr(elem, "is_raw", False):
            return bytes(elem.value or b"").decode("ascii", "replace").strip(" \x00") or None
        values = elem.value if elem.VM != 1 else [elem.value]
        texts = [getattr(v, "original_string", None) for v in values]
        return "\\".join(texts) if texts and all(texts) else None


@dataclass
class SeriesRef:
    """A stackable group of slices: one series, or one part of a series that had to be split."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    sop_class_uid: str
    instances: list[InstanceHeader]
    slices: list[SliceHeader]
    part: int = 0  # 0 when the series was not split; 1..n_parts otherwise
    n_parts: int = 1
    #: why this is not an image series (Segmentation, SR, ...), or "" for images
    non_image_kind: str = ""
    warnings: list[str] = field(default_factory=list)
    _metadata: SeriesMetadata | None = None

    @property
    def key(self) -> str:
        """The series UID, with ``#part`` appended when the series was split."""
        return self.series_instance_uid if self.n_parts == 1 else f"{self.series_instance_uid}#{self.part}"

    @property
    def is_image(self) -> bool:
        return not self.non_image_kind

    @property
    def files(self) -> list[str]:
        return [i.path for i in self.instances]

    @property
    def metadata(self) -> SeriesMetadata:
        if self._metadata is None:
            self._metadata = extract_metadata(self.instances[0].dataset, number_of_instances=len(self.instances))
        return self._metadata

    def describe(self) -> str:
        d = self.instances[0].get("SeriesDescription") or ""
        return f"{self.modality} series {self.key} ({len(self.slices)} slices{', ' + str(d) if d else ''})"


@dataclass
class ScanResult:
    series: list[SeriesRef]
    #: (path, reason) for each file that was not used
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --- reading one header --------------------------------------------------------------------------
_TEXT_VRS = {"UI", "CS", "LO", "SH", "ST", "LT", "DA", "TM", "AE", "AS"}
_TAG_VR: dict[str, tuple[int, str]] = {}


def _tag_vr(kw: str) -> tuple[int, str]:
    hit = _TAG_VR.get(kw)
    if hit is None:
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        tag = tag_for_keyword(kw)
        hit = _TAG_VR[kw] = (tag, dictionary_VR(tag))
    return hit


def _get(ds: Any, kw: str) -> Any:
    """``ds.get(kw)`` for the few header values a scan needs, decoding little-endian raw elements
    directly: pydicom's general element conversion (hooks, validation) costs about ten times more
    and dominated the scan of a 300-file series. Anything unusual falls back to pydicom."""
    if type(ds).__name__ == "FastHeader":
        return ds.get(kw)
    tag, dict_vr = _tag_vr(kw)
    try:
        elem = ds.get_item(tag)
    except KeyError:
        return None
    if elem is None:
        return None
    if getattr(elem, "is_raw", False) and elem.is_little_endian:
        raw = elem.value
        if raw is None or raw == b"":
            return None
        vr = elem.VR or dict_vr
        if vr == "US" and len(raw) == 2:
            return int.from_bytes(raw, "little")
        if vr in ("DS", "IS"):
            parts = raw.decode("ascii", "replace").strip(" \x00").split("\\")
            try:
                vals = [float(x) if vr == "DS" else int(float(x)) for x in parts]
            except ValueError:
                return ds.get(kw)  # let pydicom apply its own (lenient) rules
            return vals if len(vals) > 1 else vals[0]
        if vr in _TEXT_VRS:
            return raw.decode("ascii", "replace").strip(" \x00")
    try:
        return ds.get(kw)
    except Exception:  # noqa: BLE001 - an unparsable value counts as absent
        return None


def _int(ds: Any, kw: str, default: int) -> int:
    try:
        v = _get(ds, kw)
        return default if v in (None, "") else int(v)
    except (TypeError, ValueError):
        return default


def read_header(path: str | os.PathLike) -> InstanceHeader:
    """Parse the header of one file; raise ``MalformedDicomError`` when it is not readable DICOM."""
    from .fastheader import read_fast_header

    path = str(path)
    size = os.path.getsize(path)
    fh = read_fast_header(path)
    if fh is not None:
        return _instance(
            path,
            fh,
            ts=fh.transfer_syntax_uid,
            sop_class=str(fh.get("SOPClassUID") or ""),
            offset=fh.pixel_value_offset,
            length=fh.pixel_value_length,
            has_pixels=fh.pixel_tag_pos is not None,
            size=size,
            notes=[],
        )
    return _read_header_pydicom(path, size)


def _read_header_pydicom(path: str, size: int) -> InstanceHeader:
    import pydicom
    from pydicom.errors import InvalidDicomError

    notes: list[str] = []
    with open(path, "rb") as fp:
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            # No preamble / File Meta: accept only if it still parses to an identifiable image header
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            except Exception as exc:  # noqa: BLE001 - any parse failure means "not DICOM"
                raise MalformedDicomError(f"{path}: not a DICOM file ({type(exc).__name__})") from exc
            if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
                raise MalformedDicomError(f"{path}: not a DICOM file (no DICM prefix, no SOP/Series UIDs)")
            notes.append("no File Meta Information; read as implicit VR little endian")
        except Exception as exc:  # noqa: BLE001 - truncated header, bad lengths, ...
            raise MalformedDicomError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        pos = fp.tell()
        head = fp.read(12)
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (True, True)
    if not ts:
        ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
        if meta is not None and "MediaStorageSOPClassUID" in meta:
            notes.append("File Meta Information lacks TransferSyntaxUID; guessed from the encoding")
    has_pixels = head[:4] in (_PIXEL_TAG, _PIXEL_TAG_BE)
    if ts == _DEFLATED:
        # the file position is inside the deflated stream; whether Pixel Data follows is known on decode
        has_pixels, little = True, False
    offset = length = None
    if has_pixels and little and head[:4] == _PIXEL_TAG:
        if implicit:
            length = struct.unpack("<I", head[4:8])[0]
            offset = pos + 8
        else:
            length = struct.unpack("<I", head[8:12])[0]
            offset = pos + 12
    try:
        sop_class = str(_get(ds, "SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    except Exception:  # noqa: BLE001
        sop_class = ""
    return _instance(path, ds, ts=ts, sop_class=sop_class, offset=offset, length=length, has_pixels=has_pixels, size=size, notes=notes)


def _instance(
    path: str, ds: Any, *, ts: str, sop_class: str, offset: int | None, length: int | None, has_pixels: bool, size: int, notes: list[str]
) -> InstanceHeader:
    return InstanceHeader(
        path=path,
        header=ds,
        sop_instance_uid=str(_get(ds, "SOPInstanceUID") or ""),
        sop_class_uid=sop_class,
        series_instance_uid=str(_get(ds, "SeriesInstanceUID") or ""),
        study_instance_uid=str(_get(ds, "StudyInstanceUID") or ""),
        modality=str(_get(ds, "Modality") or ""),
        transfer_syntax_uid=ts,
        number_of_frames=max(1, _int(ds, "NumberOfFrames", 1)),
        rows=_int(ds, "Rows", 0),
        columns=_int(ds, "Columns", 0),
        bits_allocated=_int(ds, "BitsAllocated", 16),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated", 16)),
        pixel_representation=_int(ds, "PixelRepresentation", 0),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        photometric=str(_get(ds, "PhotometricInterpretation") or ""),
        pixel_value_offset=offset,
        pixel_value_length=length,
        has_pixel_data=has_pixels,
        file_size=size,
        notes=notes,
    )


# --- frames of an instance ------------------------------------------------------------------------
def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _fg(groups: Any, index: int | None, seq_kw: str) -> Any:
    """Item of functional-group macro ``seq_kw`` from a functional groups sequence (or None)."""
    if not groups:
        return None
    item = groups[index] if index is not None else groups[0]
    seq = item.get(seq_kw)
    return seq[0] if seq else None


def _frame_attr(ds: Any, frame: int, seq_kw: str, kw: str) -> Any:
    """Per-frame value first (it overrides), then the shared functional groups."""
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    if pf is not None and frame < len(pf):
        it = _fg(pf, frame, seq_kw)
        if it is not None and kw in it:
            return it.get(kw)
    it = _fg(ds.get("SharedFunctionalGroupsSequence"), None, seq_kw)
    if it is not None and kw in it:
        return it.get(kw)
    return None


def _float_or(v: Any, default: float | None) -> float | None:
    try:
        return default if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return default


def _slices_of(h: InstanceHeader) -> list[SliceHeader]:
    ds = h.header
    inst = _int(ds, "InstanceNumber", -1)
    inst_no = None if inst == -1 else inst
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        out = []
        for f in range(h.number_of_frames):
            ps = _frame_attr(ds, f, "PixelMeasuresSequence", "PixelSpacing")
            out.append(
                SliceHeader(
                    path=h.path,
                    sop_instance_uid=h.sop_instance_uid,
                    frame_index=f,
                    instance_number=inst_no,
                    position_lps=_floats(_frame_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient") or (), 3),
                    orientation=_floats(_frame_attr(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient") or (), 6),
                    pixel_spacing=_floats(ps or (), 2),
                    rows=h.rows,
                    columns=h.columns,
                    slope=_float_or(_frame_attr(ds, f, "PixelValueTransformationSequence", "RescaleSlope"), 1.0) or 1.0,
                    intercept=_float_or(_frame_attr(ds, f, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0) or 0.0,
                    slice_thickness=_float_or(_frame_attr(ds, f, "PixelMeasuresSequence", "SliceThickness"), None),
                )
            )
        return out
    pos = _floats(_get(ds, "ImagePositionPatient") or (), 3)
    ori = _floats(_get(ds, "ImageOrientationPatient") or (), 6)
    ps = _floats(_get(ds, "PixelSpacing") or _get(ds, "ImagerPixelSpacing") or (), 2)
    slope = _float_or(_get(ds, "RescaleSlope"), 1.0) or 1.0
    icpt = _float_or(_get(ds, "RescaleIntercept"), 0.0) or 0.0
    thick = _float_or(_get(ds, "SliceThickness"), None)
    if h.number_of_frames > 1:
        # Legacy multi-frame (e.g. NM, RT Dose): frames stacked along the normal by GridFrameOffsetVector
        offs = _get(ds, "GridFrameOffsetVector")
        out = []
        for f in range(h.number_of_frames):
            p = pos
            if pos is not None and ori is not None and offs is not None and len(offs) == h.number_of_frames:
                n = np.cross(ori[:3], ori[3:])
                p = tuple(float(x) for x in np.asarray(pos) + float(offs[f]) * n)
            out.append(SliceHeader(h.path, h.sop_instance_uid, f, inst_no, p, ori, ps, h.rows, h.columns, slope, icpt, thick))
        return out
    return [SliceHeader(h.path, h.sop_instance_uid, 0, inst_no, pos, ori, ps, h.rows, h.columns, slope, icpt, thick)]


# --- walking and grouping -------------------------------------------------------------------------
def iter_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Every regular file under the given folders (recursively) or the given files themselves."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in sorted(files))
        elif p.is_file():
            out.append(str(p))
        else:
            raise NoSeriesFoundError(f"{p} does not exist")
    return out


def _read_or_skip(path: str) -> InstanceHeader | tuple[str, str]:
    try:
        return read_header(path)
    except MalformedDicomError as exc:
        return (path, str(exc).split(": ", 1)[-1])
    except OSError as exc:
        return (path, f"cannot read file ({exc.strerror or exc})")


def non_image_kind(sop_class_uid: str) -> str:
    """What an instance of this SOP class is when it is not an image (Segmentation, Structured
    Report, ...), or "" for images."""
    kind = NON_IMAGE_SOP_CLASSES.get(sop_class_uid, "")
    return "Structured Report" if not kind and sop_class_uid.startswith(_SR_PREFIX) else kind


def holds_an_image(paths: Iterable[str | os.PathLike]) -> bool:
    """Whether any of the files is a readable DICOM image, stopping at the first (a study that
    arrives at the listener is usually images, and only a study of SEG/SR objects is read whole)."""
    for p in paths:
        h = _read_or_skip(str(p))
        if isinstance(h, InstanceHeader) and not non_image_kind(h.sop_class_uid):
            return True
    return False


def _orientation_key(s: SliceHeader) -> tuple:
    o = s.orientation
    ok = tuple(round(x, 4) + 0.0 for x in o) if o is not None else None
    ps = tuple(round(x, 4) for x in s.pixel_spacing) if s.pixel_spacing is not None else None
    return (ok, s.rows, s.columns, ps)


def _describe_key(k: tuple) -> str:
    o, r, c, ps = k
    ot = "no orientation" if o is None else "orientation [" + ", ".join(f"{x:g}" for x in o) + "]"
    return f"{ot}, {c}x{r}, pixel spacing {list(ps) if ps else 'missing'}"


def group_series(headers: Sequence[InstanceHeader]) -> list[SeriesRef]:
    """Group by SeriesInstanceUID, then split into parts that can share one grid."""
    by_uid: dict[str, list[InstanceHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_instance_uid, []).append(h)
    out: list[SeriesRef] = []
    for uid, hs in by_uid.items():
        first = hs[0]
        kind = non_image_kind(first.sop_class_uid)
        common = dict(
            series_instance_uid=uid,
            study_instance_uid=first.study_instance_uid,
            modality=first.modality,
            sop_class_uid=first.sop_class_uid,
        )
        if kind:
            out.append(SeriesRef(instances=hs, slices=[], non_image_kind=kind, **common))
            continue
        # de-duplicate exact same SOP instance found twice (copies of a file)
        seen: dict[str, InstanceHeader] = {}
        dup_files: list[str] = []
        for h in hs:
            if h.sop_instance_uid in seen:
                dup_files.append(h.path)
            else:
                seen[h.sop_instance_uid] = h
        hs = list(seen.values())
        parts: dict[tuple, list[tuple[InstanceHeader, SliceHeader]]] = {}
        for h in hs:
            for s in h.slices():
                parts.setdefault(_orientation_key(s), []).append((h, s))
        keys = list(parts)
        # most slices first, so part 1 is the main stack
        keys.sort(key=lambda k: -len(parts[k]))
        for n, k in enumerate(keys, start=1):
            members = parts[k]
            insts: list[InstanceHeader] = []
            for h, _ in members:
                if not insts or insts[-1] is not h:
                    insts.append(h)
            ref = SeriesRef(
                instances=insts,
                slices=[s for _, s in members],
                part=n if len(keys) > 1 else 0,
                n_parts=len(keys),
                **common,
            )
            if len(keys) > 1:
                ref.warnings.append(
                    f"series {uid} mixes {len(keys)} orientations/sizes and was split; part {n} of "
                    f"{len(keys)} has {len(members)} slice(s) with {_describe_key(k)}"
                )
            if dup_files:
                ref.warnings.append(
                    f"series {uid}: {len(dup_files)} file(s) repeat a SOP Instance UID already found; copies ignored"
                )
            for h in insts:
                for note in h.notes:
                    ref.warnings.append(f"series {uid}, instance {h.sop_instance_uid}: {note}")
            out.append(ref)
    out.sort(key=lambda r: (r.study_instance_uid, _series_number(r), r.series_instance_uid, r.part))
    return out


def _series_number(r: SeriesRef) -> int:
    return _int(r.instances[0].header, "SeriesNumber", 0)


#: files read in turn before ``scan_tree`` decides whether a thread pool would help, and the time per
#: file above which it does (a cached CT header parses in ~0.2 ms; a disk or network read takes longer)
_PROBE_FILES = 16
_SLOW_READ_S = 1e-3


def scan_tree(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, workers: int | None = None
) -> ScanResult:
    """Read every file's header and group. ``workers``: read in a thread pool of that size; by default
    the first files are read in turn and a pool takes the rest only when those reads were slow (files
    on a disk or share, not in the page cache), where waiting on I/O overlaps parsing."""
    files = iter_files(paths)
    if workers is None:
        # Headers of cached files are parsed faster in turn than in a pool, whose threads mostly wait
        # for the GIL: 300 cached CT files took 48 ms in turn against 91 ms (104 ms CPU) with 3 threads
        # on a 2-core machine. So: a pool only where reading, not parsing, is the bottleneck.
        head = files[:_PROBE_FILES]
        t0 = time.perf_counter()
        results = [_read_or_skip(f) for f in head]
        slow = (time.perf_counter() - t0) > _SLOW_READ_S * max(len(head), 1)
        rest = files[len(head):]
        pool_size = min(4, (os.cpu_count() or 1) + 1) if slow and len(rest) >= 8 else 1
    else:
        results, rest, pool_size = [], files, workers if len(files) >= 8 else 1
    if pool_size <= 1:
        results += [_read_or_skip(f) for f in rest]
    else:
        with ThreadPoolExecutor(max_workers=pool_size) as pool:
            results += list(pool.map(_read_or_skip, rest, chunksize=16))
    headers: list[InstanceHeader] = []
    skipped: list[tuple[str, str]] = []
    for r in results:
        if isinstance(r, InstanceHeader):
            if r.sop_class_uid == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in r.header:
                skipped.append((r.path, "DICOMDIR (the files it lists are read directly)"))
            elif not r.series_instance_uid:
                skipped.append((r.path, "DICOM file without SeriesInstanceUID"))
            else:
                headers.append(r)
        else:
            skipped.append(r)
    series = group_series(headers)
    # counts only: paths and UIDs are not PHI, but folder names sometimes are, so they stay out of logs
    log.info("scanned %d files: %d series (%d image), %d files skipped", len(files), len(series), sum(r.is_image for r in series), len(skipped))
    return ScanResult(series=series, skipped=skipped)


def scan(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[SeriesRef]:
    """All series (image and non-image) found under ``paths``; see ``scan_tree`` for skipped files."""
    return scan_tree(paths).series


def select_series(refs: Sequence[SeriesRef], series_uid: str | None, where: str) -> SeriesRef:
    """The one image series to load: by UID (``uid`` or ``uid#part``), or the only one there is."""
    images = [r for r in refs if r.is_image]
    if series_uid is None:
        if not images:
            raise NoSeriesFoundError(f"no image series found in {where}")
        uids = {r.series_instance_uid for r in images}
        if len(uids) > 1:
            raise DicomInputError(
                f"{where} holds {len(uids)} image series; choose one with series_uid "
                f"(e.g. {sorted(uids)[0]})"
            )
        return images[0]  # the largest part of a split series comes first
    hits = [r for r in refs if r.key == series_uid] or [r for r in refs if r.series_instance_uid == series_uid]
    if not hits:
        raise NoSeriesFoundError(f"series {series_uid} not found in {where}")
    ref = hits[0]
    if not ref.is_image:
        raise DicomInputError(f"series {ref.series_instance_uid} is a {ref.non_image_kind}, not an image series")
    return ref
