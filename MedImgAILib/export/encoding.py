"""Sequences encoded ahead of pydicom's writer, with exactly pydicom's bytes.

pydicom's writer spends ~25-40 us per element (a buffer, a VR check, a charset conversion and an
ambiguous-VR pass per sequence item). A SEG's per-frame functional groups, an SR's content tree and
the reference lists of both are thousands of small elements of a few VRs. ``encode_items`` encodes
such sequence items (explicit VR little endian) the way pydicom 3's ``write_dataset`` does, element
by element, at a few microseconds each; whatever it does not encode itself (PN, OB, AT, non-ASCII
text, a charset whose ASCII is not plain ASCII, 16-bit-length overflow...) it hands to pydicom's own
``write_data_element``, so the result is pydicom's by construction. Raw sequences in explicit VR
little endian (the export's pre-encoded reference lists) are written as they are, as pydicom writes
them; items holding other raw (undecoded) elements or ambiguous VRs are left to pydicom entirely:
those need its read-back and VR correction.
Tests compare the output with pydicom's writer for every object we export.
"""

from __future__ import annotations

import operator
import struct
from typing import Iterable, Optional

import numpy as np
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import _LUT_DESCRIPTOR_TAGS
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, PersonName

# pydicom's default (no Specific Character Set) and the encoding of its plain-string VRs
_DEFAULT_ENCODING = "iso8859"
_SHORT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length
_LONG = struct.Struct("<HH2sHI")  # tag, VR, reserved, 4-byte length
_ITEM = struct.Struct("<HHI")
_ITEM_DELIMITER = _ITEM.pack(0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = _ITEM.pack(0xFFFE, 0xE0DD, 0)
_UNDEFINED = 0xFFFFFFFF

_STRING_PAD = {"UI": "\0", "CS": " ", "AE": " ", "AS": " ", "UR": " "}  # pydicom's write_string VRs
_DATETIME = ("DA", "DT", "TM")  # written as strings when they are strings
_TEXT = ("SH", "LO", "ST", "LT", "UT", "UC")  # charset-encoded (write_text)
_NUMBER_STRING = ("DS", "IS")
_BINARY = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_LONG_VRS = frozenset(str(v) for v in EXPLICIT_VR_LENGTH_32)
_AMBIGUOUS = frozenset(str(v) for v in AMBIGUOUS_VR)
_LUT_DESCRIPTORS = frozenset(int(t) for t in _LUT_DESCRIPTOR_TAGS)  # pydicom writes their first value specially

_ascii_plain: dict[tuple[str, ...], bool] = {}
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t\n\f\r"


class _Unsupported(Exception):
    """Something pydicom must decide itself (raw element, ambiguous VR): leave the sequence to it."""


def _charset_key(charset) -> tuple[str, ...]:
    if charset is None or isinstance(charset, str):
        return (charset or "",)
    return tuple(charset)


def _ascii_is_plain(charset) -> bool:
    """Whether pydicom encodes an all-ASCII text value as its ASCII bytes under ``charset`` (true for
    the single-byte and UTF-8 sets; checked once per charset with pydicom's own encoder)."""
    key = _charset_key(charset)
    ok = _ascii_plain.get(key)
    if ok is None:
        encs = convert_encodings(charset)
        ok = _ascii_plain[key] = encode_string(_PRINTABLE, encs) == _PRINTABLE.encode("ascii")
    return ok


def _pydicom_element(elem: DataElement, charset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, charset)
    return fp.getvalue()


def _joined(value) -> Optional[str]:
    """A string VR value as pydicom's multi_string joins it; None when not plain str values."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, MultiValue)) and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return None


def _value_bytes(elem: DataElement, value, vr: str, plain: bool) -> Optional[bytes]:
    """The value field as pydicom writes it, or None when pydicom must write this element."""
    if isinstance(value, np.ndarray):
        return None  # pydicom's multi-value handling of arrays
    pad = _STRING_PAD.get(vr)
    if pad is not None or vr in _DATETIME:
        s = _joined(value)
        if s is None:
            return None  # date/time objects, odd values: pydicom's formatting
        if len(s) % 2:
            s += pad or " "
        return s.encode(_DEFAULT_ENCODING)
    if vr in _TEXT:
        s = _joined(value)
        if s is None or not plain or not s.isascii():
            return None
        b = s.encode("ascii")
        return b + b" " if len(b) % 2 else b
    if vr in _NUMBER_STRING:
        if isinstance(value, (list, tuple, MultiValue)):
            s = "\\".join(x.original_string if hasattr(x, "original_string") else str(x) for x in value)
        else:
            s = value.original_string if hasattr(value, "original_string") else str(value)
        if len(s) % 2:
            s += " "
        return s.encode(_DEFAULT_ENCODING)
    fmt = _BINARY.get(vr)
    if fmt is not None and int(elem.tag) not in _LUT_DESCRIPTORS:
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return struct.pack("<" + fmt, value)
            if isinstance(value, (list, MultiValue)):  # pydicom packs values that have an append method
                return struct.pack(f"<{len(value)}{fmt}", *value)
        except struct.error:
            return None  # pydicom raises its own error for this element
    return None


_CHARSET_TAG = 0x00080005
_first = operator.itemgetter(0)


def _is_empty(value) -> bool:
    """pydicom's DataElement.is_empty for a non-sequence value (VM == 0)."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, PersonName)):
        return not value
    try:
        return len(value) == 0
    except TypeError:
        return False  # a number


def _encode_dataset(ds: Dataset, parent_charset, out: list) -> int:
    """Append the encoded elements of one sequence item (pydicom's write_dataset) to ``out``;
    returns their length."""
    elements = ds._dict  # the elements as stored: raw ones must not be decoded here
    cs = elements.get(_CHARSET_TAG)
    charset = parent_charset if cs is None else ds.SpecificCharacterSet
    plain = _ascii_is_plain(charset)
    n = 0
    # tag order; plain int keys sort and compare faster than BaseTag
    for t, elem in sorted([(int(k), e) for k, e in elements.items()], key=_first):
        group, element = t >> 16, t & 0xFFFF
        if element == 0 and group > 6:
            continue  # pydicom drops retired group lengths
        if isinstance(elem, RawDataElement):
            if not _verbatim(elem):
                raise _Unsupported(t)
            # a sequence already encoded (export's reference lists): pydicom writes its bytes as they are
            out.append(_LONG.pack(group, element, b"SQ", 0, len(elem.value)))
            out.append(elem.value)
            n += 12 + len(elem.value)
            continue
        vr = elem.VR
        if vr == "SQ":
            start = len(out)
            out.append(b"")  # the header, once the length is known
            body = 0
            for item in elem.value:
                body += _encode_item(item, charset, out)
            if elem.is_undefined_length:
                out[start] = _LONG.pack(group, element, b"SQ", 0, _UNDEFINED)
                out.append(_SEQUENCE_DELIMITER)
                n += 12 + body + 8
            else:
                out[start] = _LONG.pack(group, element, b"SQ", 0, body)
                n += 12 + body
            continue
        if vr in _AMBIGUOUS or vr is None or len(vr) != 2:
            raise _Unsupported(t)
        value = elem.value
        if _is_empty(value):
            raw = b""
        else:
            raw = _value_bytes(elem, value, vr, plain)
            if raw is None or (vr not in _LONG_VRS and len(raw) > 0xFFFF):
                b = _pydicom_element(elem, charset)
                out.append(b)
                n += len(b)
                continue
        if vr in _LONG_VRS:
            out.append(_LONG.pack(group, element, vr.encode(), 0, len(raw)))
            n += 12 + len(raw)
        else:
            out.append(_SHORT.pack(group, element, vr.encode(), len(raw)))
            n += 8 + len(raw)
        out.append(raw)
    return n


def _verbatim(elem: RawDataElement) -> bool:
    """A raw sequence of defined length in explicit VR little endian: its VRs are in its bytes (no
    ambiguous-VR pass can change them), and pydicom writes it in that encoding as it is."""
    return (elem.VR == "SQ" and not elem.is_implicit_VR and elem.is_little_endian
            and elem.value is not None and elem.length != _UNDEFINED)


def _encode_item(item: Dataset, charset, out: list) -> int:
    """Append one item (header, elements, delimiter); returns its encoded length."""
    start = len(out)
    out.append(b"")
    body = _encode_dataset(item, charset, out)
    if getattr(item, "is_undefined_length_sequence_item", False):
        out[start] = _ITEM.pack(0xFFFE, 0xE000, _UNDEFINED)
        out.append(_ITEM_DELIMITER)
        return 8 + body + 8
    out[start] = _ITEM.pack(0xFFFE, 0xE000, body)
    return 8 + body


def encode_items(items: Iterable[Dataset], charset=_DEFAULT_ENCODING) -> Optional[bytes]:
    """The value of a sequence holding ``items`` as pydicom 3 writes it in explicit VR little endian
    under the enclosing dataset's Specific Character Set ``charset``; None when an item holds raw
    elements (other than explicit-VR sequences) or ambiguous VRs."""
    out: list[bytes] = []
    try:
        for item in items:
            _encode_item(item, charset, out)
    except _Unsupported:
        return None
    return b"".join(out)


def preencode_sequences(ds: Dataset) -> None:
    """Replace the top-level sequences of ``ds`` by their encoded bytes (raw elements, which pydicom
    writes as they are); the file is byte for byte what pydicom would write. Accessed again, the
    elements read back as ordinary sequences. Only for datasets written as explicit VR little endian.

    pydicom resolves ambiguous VRs before writing a dataset not read in the encoding it is written in,
    and that pass decodes raw sequences again: it is run here on what was not encoded, and the dataset
    then declares the encoding it will be written in (pydicom's documented way to keep raw elements
    raw)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        return
    charset = ds.get("SpecificCharacterSet", _DEFAULT_ENCODING)
    encoded: dict = {}
    for elem in list(ds.elements()):
        if elem.is_raw or elem.VR != "SQ" or elem.is_undefined_length or not elem.value:
            continue
        enc = encode_items(elem.value, charset)
        if enc is not None:
            encoded[elem.tag] = RawDataElement(elem.tag, "SQ", len(enc), enc, 0, False, True)
    if not encoded:
        return
    # sequences already raw in explicit VR little endian stay out of the ambiguous-VR pass too: it
    # would decode them (300 items for a reference list) for pydicom to encode them again
    kept = {t: e for t, e in ds._dict.items() if isinstance(e, RawDataElement) and _verbatim(e)}
    for tag in (*encoded, *kept):
        del ds[tag]
    correct_ambiguous_vr(ds, True)  # what is left (encoded sequences hold no ambiguous VR)
    for tag, raw in {**encoded, **kept}.items():
        ds[tag] = raw
    ds.set_original_encoding(False, True, ds._character_set)


def sequence_bytes_as_pydicom_writes(ds: Dataset, keyword: str) -> bytes:
    """pydicom's own encoding of one top-level sequence element (for tests and checks)."""
    elem = ds[keyword]
    return _pydicom_element(elem, ds.get("SpecificCharacterSet", _DEFAULT_ENCODING))


__all__ = ["encode_items", "preencode_sequences", "sequence_bytes_as_pydicom_writes"]
