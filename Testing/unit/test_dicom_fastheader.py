"""The fast header walker agrees with pydicom on every file it accepts, and declines the rest."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from MedImgAILib.dicom.fastheader import WANTED, read_fast_header
from MedImgAILib.dicom.scan import _read_header_pydicom, read_header
from Testing.dicom_synth import write_enhanced_ct, write_series


def _all_files(pydicom_testdata: Path, ct3slice_dir: Path) -> list[Path]:
    files = [p for p in pydicom_testdata.rglob("*") if p.is_file()]
    return files + sorted(ct3slice_dir.iterdir())


def _norm(v):
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return [_norm(x) for x in v]
    if isinstance(v, (int, float)) or type(v).__name__ in ("DSfloat", "IS", "DSdecimal"):
        return float(v)
    return str(v).strip()


def test_fast_header_matches_pydicom_on_every_shipped_file(pydicom_testdata: Path, ct3slice_dir: Path) -> None:
    accepted = declined = 0
    for f in _all_files(pydicom_testdata, ct3slice_dir):
        fh = read_fast_header(f)
        if fh is None:
            declined += 1
            continue
        accepted += 1
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for kw, vr in WANTED.values():
            if kw in ds and ds[kw].value not in (None, "", b""):
                assert _norm(fh.get(kw)) == _norm(ds[kw].value), (f.name, kw)
            else:
                assert fh.get(kw) is None, (f.name, kw)
        full = _read_header_pydicom(str(f), f.stat().st_size)
        fast = read_header(f)
        for attr in ("pixel_value_offset", "pixel_value_length", "has_pixel_data", "transfer_syntax_uid", "rows", "columns", "bits_stored", "number_of_frames"):
            assert getattr(fast, attr) == getattr(full, attr), (f.name, attr)
        # decimal strings as the file writes them, from either reader (the SEG copies positions verbatim)
        for kw, vr in WANTED.values():
            if vr == "DS" and fh.get(kw) is not None:
                written = pydicom.dcmread(f, stop_before_pixels=True)[kw]
                text = "\\".join(v.original_string for v in (written.value if written.VM > 1 else [written.value]))
                assert fast.text(kw) == text.strip() and full.text(kw) == text.strip(), (f.name, kw)
    assert accepted >= 60 and declined >= 10


def test_fast_header_declines_what_it_does_not_handle(tmp_path: Path, pydicom_testdata: Path) -> None:
    e = write_enhanced_ct(tmp_path / "e.dcm")
    assert read_fast_header(e.files[0]) is None  # functional groups: pydicom reads those
    assert read_fast_header(pydicom_testdata / "dicomdirtests" / "DICOMDIR") is None
    assert read_fast_header(pydicom_testdata / "MR_small_bigendian.dcm") is None
    assert read_fast_header(pydicom_testdata / "image_dfl.dcm") is None
    assert read_fast_header(pydicom_testdata / "no_meta.dcm") is None
    s = write_series(tmp_path / "s", size=(4, 4, 2))
    fh = read_fast_header(s.files[0])
    assert fh is not None and fh.get("Rows") == 4 and fh.get("ImagePositionPatient") == pytest.approx(list(s.positions[0]))
