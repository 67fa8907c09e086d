"""A narrow, fast reader for the header values a series scan needs (the hot path of loading).

Why it exists: pydicom's ``dcmread`` builds a full Dataset (about 1 ms per CT file here), and a scan
reads every file of a series; for a 300-slice CT that alone cost more than SimpleITK's whole load.
This walker reads the first 64 KiB of a Part 10 file, steps over the elements by their lengths
(sequences included, defined or undefined length), decodes only the ~25 top-level attributes that
grouping, sorting and pixel reading use, and notes where Pixel Data starts.

It handles the common case only, and says so by returning None for anything else: no DICM prefix,
big-endian or deflated transfer syntaxes, headers larger than the first read, enhanced multi-frame
objects (their functional groups need a real parser), DICOMDIRs, or any inconsistency in lengths.
The caller then uses pydicom, which remains the reference for everything (and the tests check the
two agree on every file pydicom ships).
"""

from __future__ import annotations

import os
import struct
from typing import Any

_READ = 65536
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE_FAMILY_EXCLUDED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

#: tag -> (keyword, VR) of the values decoded
WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181164: ("ImagerPixelSpacing", "DS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
#: top-level attributes whose presence sends the file to pydicom
_NEEDS_PYDICOM = {
    0x00041220,  # DirectoryRecordSequence (DICOMDIR)
    0x52009229,  # SharedFunctionalGroupsSequence
    0x52009230,  # PerFrameFunctionalGroupsSequence
    0x3004000C,  # GridFrameOffsetVector (legacy multi-frame stacks)
}

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag = struct.Struct("<HH").unpack_from


class _Bail(Exception):
    """Not the common case: let pydicom read the file."""


class FastHeader:
    """Decoded values by keyword, with ``get`` and ``in`` like a pydicom Dataset (values only)."""

    __slots__ = ("values", "texts", "transfer_syntax_uid", "pixel_tag_pos", "pixel_value_offset", "pixel_value_length",
                 "implicit")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        #: decimal strings as written (an object that copies a position copies the file's text)
        self.texts: dict[str, str] = {}
        self.transfer_syntax_uid = ""
        self.pixel_tag_pos: int | None = None
        self.pixel_value_offset: int | None = None
        self.pixel_value_length: int | None = None
        self.implicit = False

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.values


def _decode(raw: bytes, vr: str) -> Any:
    if vr == "US":
        if len(raw) < 2:
            raise _Bail
        return _u16(raw)[0]
    text = raw.decode("ascii", "replace").strip(" \x00")
    if vr in ("DS", "IS"):
        if not text:
            return None
        try:
            vals = [float(x) if vr == "DS" else int(float(x)) for x in text.split("\\")]
        except ValueError:
            raise _Bail from None
        return vals if len(vals) > 1 else vals[0]
    return text


def _skip_undefined(buf: bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Position after a sequence of undefined length starting at ``pos`` (its first item)."""
    if depth > 16:
        raise _Bail
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Bail
        g, e = _tag(buf, pos)
        tag = (g << 16) | e
        length = _u32(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Bail
        if length != 0xFFFFFFFF:
            pos += length
            continue
        # item of undefined length: walk its elements to the item delimiter
        while True:
            if pos + 8 > n:
                raise _Bail
            g, e = _tag(buf, pos)
            tag = (g << 16) | e
            if tag == _ITEM_END:
                pos += 8
                break
            pos = _skip_element(buf, pos, implicit, depth + 1)


def _skip_element(buf: bytes, pos: int, implicit: bool, depth: int) -> int:
    n = len(buf)
    if implicit:
        length = _u32(buf, pos + 4)[0]
        hdr = 8
    else:
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length = _u32(buf, pos + 8)[0]
            hdr = 12
        else:
            length = _u16(buf, pos + 6)[0]
            hdr = 8
    if length == 0xFFFFFFFF:
        return _skip_undefined(buf, pos + hdr, implicit, depth)
    end = pos + hdr + length
    if end > n:
        raise _Bail
    return end


def read_fast_header(path: str | os.PathLike) -> FastHeader | None:
    """The header values of a Part 10 little-endian file, or None when pydicom must read it."""
    try:
        with open(path, "rb") as fp:
            buf = fp.read(_READ)
    except OSError:
        return None
    try:
        return _parse(buf)
    except (_Bail, struct.error, IndexError):
        return None


def _parse(buf: bytes) -> FastHeader | None:
    n = len(buf)
    if n < 140 or buf[128:132] != b"DICM":
        return None
    h = FastHeader()
    pos = 132
    # File Meta Information: always explicit VR little endian
    while pos + 8 <= n:
        g, e = _tag(buf, pos)
        if g != 0x0002:
            break
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, hdr = _u32(buf, pos + 8)[0], 12
        else:
            length, hdr = _u16(buf, pos + 6)[0], 8
        if length == 0xFFFFFFFF or pos + hdr + length > n:
            return None
        if e == 0x0010:
            h.transfer_syntax_uid = buf[pos + hdr : pos + hdr + length].decode("ascii", "replace").strip(" \x00")
        pos += hdr + length
    ts = h.transfer_syntax_uid
    if not ts or ts in _EXPLICIT_LE_FAMILY_EXCLUDED:
        return None
    implicit = h.implicit = ts == _IMPLICIT_LE
    values = h.values
    while True:
        if pos + 8 > n:
            # header (or the file) ended without Pixel Data
            return h if n < _READ else None
        g, e = _tag(buf, pos)
        tag = (g << 16) | e
        if tag >= _PIXEL_DATA:
            if tag == _PIXEL_DATA:
                h.pixel_tag_pos = pos
                if implicit:
                    h.pixel_value_length, h.pixel_value_offset = _u32(buf, pos + 4)[0], pos + 8
                else:
                    if pos + 12 > n:
                        return None
                    h.pixel_value_length, h.pixel_value_offset = _u32(buf, pos + 8)[0], pos + 12
            return h  # trailing elements after Pixel Data (padding) are not needed
        if tag in _NEEDS_PYDICOM:
            return None
        want = WANTED.get(tag)
        if want is None:
            pos = _skip_element(buf, pos, implicit, 0)
            continue
        if implicit:
            length, hdr = _u32(buf, pos + 4)[0], 8
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                length, hdr = _u32(buf, pos + 8)[0], 12
            else:
                length, hdr = _u16(buf, pos + 6)[0], 8
            if vr.decode("ascii", "replace") != want[1]:
                return None  # an unexpected VR: pydicom knows better
        if length == 0xFFFFFFFF or pos + hdr + length > n:
            return None
        if length:
            raw = buf[pos + hdr : pos + hdr + length]
            v = _decode(raw, want[1])
            if v is not None and v != "":
                values[want[0]] = v
                if want[1] == "DS":
                    h.texts[want[0]] = raw.decode("ascii").strip(" \x00")
        pos += hdr + length
