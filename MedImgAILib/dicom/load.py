"""Build a ``Volume`` from a scanned series.

Memory: the output array is allocated once, in the smallest type that holds the rescaled values
exactly (int16 for ordinary CT in HU, float32 when a slope is fractional), and each slice's pixels go
straight into it. For native (uncompressed little-endian) transfer syntaxes the bytes are read from the
offset the header scan found, with ``readinto`` on the slice's own memory: no pydicom dataset, no
intermediate copy of the whole file. Compressed slices are decoded by pydicom (pylibjpeg plugins: JPEG,
JPEG-LS, JPEG 2000, RLE) one instance at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np

from ..errors import DicomInputError, MalformedDicomError, MissingPixelDataError
from ..volume import Volume
from .geometry import _fmt_pos, stack_geometry
from .scan import InstanceHeader, SeriesRef, SliceHeader, scan_tree, select_series

_INT16 = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)


def _stored_dtype(h: InstanceHeader) -> np.dtype:
    signed = h.pixel_representation == 1
    return np.dtype({8: "i1" if signed else "u1", 16: "<i2" if signed else "<u2", 32: "<i4" if signed else "<u4"}[h.bits_allocated])


def _where(s: SliceHeader) -> str:
    return f"slice at LPS {_fmt_pos(s.position_lps)}" if s.position_lps else f"instance {s.sop_instance_uid}"


def _check_instances(ref: SeriesRef) -> None:
    uid = ref.series_instance_uid
    by_path = {h.path: h for h in ref.instances}
    missing = [s for s in ref.slices if not by_path[s.path].has_pixel_data]
    if missing:
        raise MissingPixelDataError(
            f"series {uid}: {len(missing)} of {len(ref.slices)} slice(s) have no Pixel Data "
            f"(first: {_where(missing[0])}"
            + (f", instance {missing[0].sop_instance_uid})" if missing[0].position_lps else ")")
        )
    for h in ref.instances:
        if h.truncated:
            s = next(s for s in ref.slices if s.path == h.path)
            have = h.file_size - (h.pixel_value_offset or 0)
            need = h.frame_bytes * h.number_of_frames if h.native else h.pixel_value_length
            raise MalformedDicomError(
                f"series {uid}: truncated file for the {_where(s)} (instance {h.sop_instance_uid}): "
                f"{have} of {need} pixel bytes present"
            )
        if h.samples_per_pixel != 1:
            raise DicomInputError(
                f"series {uid}: {h.samples_per_pixel} samples per pixel ({h.photometric}); only grayscale "
                "volumes are loaded"
            )
        if h.bits_allocated not in (8, 16, 32):
            raise DicomInputError(f"series {uid}: BitsAllocated {h.bits_allocated} is not supported for volumes")


def _output_dtype(ref: SeriesRef) -> np.dtype:
    """int16 when every slope is 1 and every intercept an integer (HU for CT), else float32."""
    if all(s.slope == 1.0 and float(s.intercept).is_integer() for s in ref.slices):
        if all(h.bits_allocated <= 16 for h in ref.instances):
            return np.dtype(np.int16)  # checked per slice; promoted to float32 if a value does not fit
    return np.dtype(np.float32)


class _Overflow(Exception):
    pass


def _fit_raw(raw: np.ndarray, h: InstanceHeader) -> np.ndarray:
    """Apply BitsStored: mask unused high bits (unsigned) or sign-extend (signed), only when needed."""
    if h.bits_stored >= h.bits_allocated:
        return raw
    lo, hi = int(raw.min()), int(raw.max())
    if h.pixel_representation == 0:
        top = (1 << h.bits_stored) - 1
        if hi > top:
            raw = raw & raw.dtype.type(top)
    else:
        half = 1 << (h.bits_stored - 1)
        if lo < -half or hi > half - 1:
            shift = h.bits_allocated - h.bits_stored
            raw = (raw << shift) >> shift
    return raw


def _place(out_slice: np.ndarray, raw: np.ndarray, s: SliceHeader) -> None:
    """Write rescaled ``raw`` into ``out_slice``; raise _Overflow when int16 cannot hold it."""
    if out_slice.dtype == np.int16:
        icpt = int(s.intercept)
        lo, hi = int(raw.min()) + icpt, int(raw.max()) + icpt
        if lo < _INT16[0] or hi > _INT16[1]:
            raise _Overflow
        if raw.dtype == np.int16:
            if raw is not out_slice:
                out_slice[...] = raw
        elif raw.dtype == np.uint16 and int(raw.max()) <= _INT16[1]:
            out_slice[...] = raw.view(np.int16)
        else:
            out_slice[...] = raw.astype(np.int32) + icpt
            return
        if icpt:
            out_slice += np.int16(icpt)
        return
    np.multiply(raw, np.float32(s.slope), out=out_slice, casting="unsafe")
    if s.intercept:
        out_slice += np.float32(s.intercept)


def _read_native(out_slice: np.ndarray, h: InstanceHeader, s: SliceHeader, scratch: dict) -> None:
    dt = _stored_dtype(h)
    offset = h.pixel_value_offset + s.frame_index * h.frame_bytes  # type: ignore[operator]
    direct = out_slice.dtype == dt and h.bits_stored >= h.bits_allocated
    if direct:
        buf = out_slice
    else:
        key = (dt.str, out_slice.shape)
        buf = scratch.get(key)
        if buf is None:
            buf = scratch[key] = np.empty(out_slice.shape, dt)
    with open(h.path, "rb", buffering=0) as fp:
        fp.seek(offset)
        mv = memoryview(buf).cast("B")
        got = fp.readinto(mv)
        while got < len(mv):  # readinto on a raw file may return short counts
            more = fp.readinto(mv[got:])
            if not more:
                raise MalformedDicomError(f"truncated file {os.path.basename(h.path)}")
            got += more
    if direct:
        if out_slice.dtype == np.int16:
            # already the stored values in place; check the rescaled range fits, then add the intercept
            icpt = int(s.intercept)
            if icpt:
                lo, hi = int(buf.min()) + icpt, int(buf.max()) + icpt
                if lo < _INT16[0] or hi > _INT16[1]:
                    raise _Overflow
                buf += np.int16(icpt)
        else:
            _place(out_slice, buf, s)
        return
    _place(out_slice, _fit_raw(buf, h), s)


def load_series(ref: SeriesRef, *, workers: int | None = None) -> Volume:
    """Pixels + geometry + metadata of one scanned image series (or one part of a split series)."""
    if not ref.is_image:
        raise DicomInputError(f"series {ref.series_instance_uid} is a {ref.non_image_kind}, not an image series")
    _check_instances(ref)
    uid = ref.series_instance_uid
    h0 = ref.instances[0]
    sbs = h0.get("SpacingBetweenSlices")
    try:
        sbs = float(sbs) if sbs not in (None, "") else None
    except (TypeError, ValueError):
        sbs = None
    geo = stack_geometry(ref.slices, uid, spacing_between_slices=sbs)
    slices = [ref.slices[i] for i in geo.order]
    by_path = {h.path: h for h in ref.instances}
    nk, nj, ni = len(slices), slices[0].rows, slices[0].columns
    out = np.empty((nk, nj, ni), dtype=_output_dtype(ref))
    warnings = list(ref.warnings) + geo.warnings
    order_note = _instance_number_order(slices)
    if order_note == "mixed":
        # a sign of interleaved stacks (several acquisitions sharing one series UID) or edited files
        warnings.append(
            f"series {uid}: InstanceNumber does not follow the slice positions (neither increasing nor "
            "decreasing along the normal); slices were ordered by position"
        )

    def fill_all(out: np.ndarray) -> None:
        native = [k for k, s in enumerate(slices) if by_path[s.path].native]
        other = [k for k, s in enumerate(slices) if not by_path[s.path].native]

        def read_one(k: int, scratch: dict) -> None:
            s = slices[k]
            try:
                _read_native(out[k], by_path[s.path], s, scratch)
            except _Overflow:
                raise
            except MalformedDicomError:
                raise MalformedDicomError(f"series {uid}: truncated file for the {_where(s)}") from None
            except OSError as exc:
                raise MalformedDicomError(f"series {uid}: cannot read the {_where(s)}: {exc.strerror}") from exc

        n_workers = workers or min(4, (os.cpu_count() or 1) + 1)
        if len(native) >= 16 and n_workers > 1:
            chunks = [native[i::n_workers] for i in range(n_workers)]

            def run(chunk: list[int]) -> None:
                scratch: dict = {}
                for k in chunk:
                    read_one(k, scratch)

            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                for f in [pool.submit(run, c) for c in chunks]:
                    f.result()
        else:
            scratch: dict = {}
            for k in native:
                read_one(k, scratch)
        _decode_others(out, other, slices, by_path, uid, warnings)

    try:
        fill_all(out)
    except _Overflow:
        out = np.empty((nk, nj, ni), dtype=np.float32)
        fill_all(out)
    if any(by_path[s.path].photometric == "MONOCHROME1" for s in slices):
        warnings.append(f"series {uid}: MONOCHROME1 (higher values display darker); values are left as stored")

    meta = ref.metadata
    return Volume(
        array=out,
        affine=geo.affine,
        series_instance_uid=uid,
        study_instance_uid=ref.study_instance_uid,
        frame_of_reference_uid=str(h0.get("FrameOfReferenceUID") or ""),
        modality=ref.modality,
        source_sop_instance_uids=[s.sop_instance_uid for s in slices],
        source_frame_numbers=[s.frame_index + 1 for s in slices],
        source_sop_class_uid=ref.sop_class_uid,
        metadata=meta,
        warnings=warnings,
        extra={
            "slice_positions_along_normal_mm": geo.positions_along_normal_mm,
            "series_part": ref.part,
            "series_parts": ref.n_parts,
            #: "increasing" / "decreasing" along k (GE often writes decreasing), "mixed", or "" if absent
            "instance_number_order": order_note,
            "source_files": [s.path for s in slices],
        },
    )


def _instance_number_order(slices: Sequence[SliceHeader]) -> str:
    nums = [s.instance_number for s in slices]
    if len(nums) < 2 or any(n is None for n in nums) or len({s.sop_instance_uid for s in slices}) < len(slices):
        return ""  # single slice, missing numbers, or frames of one multi-frame object
    steps = [b - a for a, b in zip(nums, nums[1:])]  # type: ignore[operator]
    if all(d > 0 for d in steps):
        return "increasing"
    if all(d < 0 for d in steps):
        return "decreasing"
    return "mixed"


def _decode_others(
    out: np.ndarray, ks: Sequence[int], slices: Sequence[SliceHeader], by_path: dict, uid: str, warnings: list[str]
) -> None:
    """Compressed (or otherwise not-in-place) slices: decode each instance once with pydicom."""
    if not ks:
        return
    import pydicom

    by_file: dict[str, list[int]] = {}
    for k in ks:
        by_file.setdefault(slices[k].path, []).append(k)
    for path, kk in by_file.items():
        h = by_path[path]
        try:
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" not in ds:
                raise MissingPixelDataError(f"series {uid}: no Pixel Data in the {_where(slices[kk[0]])}")
            arr = ds.pixel_array
        except (MissingPixelDataError, _Overflow):
            raise
        except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
            if _decode_with_gdcm(out, kk, slices, h, warnings, uid, exc):
                continue
            raise MalformedDicomError(
                f"series {uid}: cannot decode the {_where(slices[kk[0]])} (transfer syntax "
                f"{h.transfer_syntax_uid}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        if arr.ndim == 2:
            arr = arr[None]
        for k in kk:
            s = slices[k]
            raw = arr[s.frame_index]
            if raw.shape != out.shape[1:]:
                raise MalformedDicomError(f"series {uid}: decoded {_where(s)} has shape {raw.shape}, expected {out.shape[1:]}")
            _place(out[k], raw, s)


def _decode_with_gdcm(
    out: np.ndarray, kk: Sequence[int], slices: Sequence[SliceHeader], h: InstanceHeader, warnings: list[str], uid: str, why: Exception
) -> bool:
    """Second decoder for single-frame files pylibjpeg rejects (GDCM via SimpleITK, rescale applied)."""
    if h.number_of_frames != 1 or len(kk) != 1:
        return False
    try:
        import SimpleITK as sitk

        img = sitk.ReadImage(h.path)
        arr = sitk.GetArrayFromImage(img).reshape(out.shape[1:])
    except Exception:  # noqa: BLE001 - GDCM failing too means the file is broken
        return False
    if out.dtype == np.int16 and (arr.min() < _INT16[0] or arr.max() > _INT16[1] or not np.all(np.mod(arr, 1) == 0)):
        raise _Overflow
    out[kk[0]] = arr
    warnings.append(
        f"series {uid}: the {_where(slices[kk[0]])} was decoded by GDCM because pydicom's decoders failed "
        f"({type(why).__name__})"
    )
    return True


def load_volume(
    path_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    series_uid: str | None = None,
    *,
    workers: int | None = None,
) -> Volume:
    """Scan a folder (or files) and load one image series as a ``Volume``.

    ``series_uid`` may be a SeriesInstanceUID or ``uid#part`` for one part of a series that was split
    (mixed orientations or sizes); without it the folder must hold exactly one image series.
    """
    where = str(path_or_files) if isinstance(path_or_files, (str, os.PathLike)) else "the given files"
    result = scan_tree(path_or_files, workers=workers)
    ref = select_series(result.series, series_uid, where)
    vol = load_series(ref, workers=workers)
    if ref.n_parts > 1 and (series_uid is None or "#" not in series_uid):
        vol.warnings.append(
            f"series {ref.series_instance_uid} was split into {ref.n_parts} parts; loaded part {ref.part} "
            f"(the largest); choose another with series_uid='{ref.series_instance_uid}#N'"
        )
    return vol
