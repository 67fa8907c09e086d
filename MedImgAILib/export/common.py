"""What every exported object needs: the source series' headers checked and ordered like the Volume,
the device that produced the result, pre-allocated UIDs (so the objects can reference each other),
and atomic writing."""

from __future__ import annotations

import contextlib
import copy
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import format_number_as_ds

from .. import __version__ as LIB_VERSION
from ..errors import ExportError
from ..results import Code
from ..volume import Volume
from .encoding import preencode_sequences

MANUFACTURER = "MedImgAI"
#: private coding scheme for concepts no public terminology has (DICOM PS3.16 8.2: "99" prefix)
PRIVATE_SCHEME = "99MEDIMGAI"


@dataclass
class DeviceInfo:
    """The algorithm as the observer / creator of the objects."""

    model_id: str
    model_version: str
    manufacturer: str = MANUFACTURER
    software_version: str = LIB_VERSION
    #: algorithm family (CID 7162); models here are "Artificial Intelligence"
    algorithm_family: Code = field(
        default_factory=lambda: Code(value="123110", scheme="DCM", meaning="Artificial Intelligence")
    )

    @property
    def uid(self) -> str:
        """Stable per model id + version, so every report of one model names the same device."""
        return generate_uid(entropy_srcs=["medimgai-device", self.model_id, self.model_version])


@dataclass
class ExportUIDs:
    """UIDs allocated before anything is written, so that SEG, SR and key images can name each other."""

    seg_series: str = field(default_factory=generate_uid)
    seg_instance: str = field(default_factory=generate_uid)
    sr_series: str = field(default_factory=generate_uid)
    sr_instance: str = field(default_factory=generate_uid)
    key_image_series: str = field(default_factory=generate_uid)
    #: SOP Instance UID of key image n (1-based), allocated on first use: the SR lists the key images
    #: as evidence, and the pipeline stores the SR before it renders them
    key_images: dict[int, str] = field(default_factory=dict)

    def key_image(self, n: int) -> str:
        return self.key_images.setdefault(n, generate_uid())


def _ds(src: Dataset | str | os.PathLike[str]) -> Dataset:
    if isinstance(src, Dataset):
        return src
    try:
        return pydicom.dcmread(str(src), stop_before_pixels=True)
    except Exception as e:  # pydicom raises several kinds for unreadable files
        raise ExportError(f"source image {src} cannot be read as DICOM: {e}") from e


def _sanitized(ds: Dataset) -> Dataset:
    """Header fixes that the objects we write need and that real files often get wrong: an empty
    Specific Character Set (means the default repertoire; highdicom rejects the empty value)."""
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        ds = copy.deepcopy(ds)
        del ds.SpecificCharacterSet
    return ds


REQUIRED_SOURCE_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)


def _check_headers(dss: Sequence[Any], name: Callable[[Any], str]) -> None:
    """Every source has the attributes the objects reference it by; one series, one frame of reference."""
    if not dss:
        raise ExportError("no source images given: SEG/SR/key images must reference the analysed series")
    for d in dss:
        missing = [t for t in REQUIRED_SOURCE_TAGS if d.get(t) in (None, "")]
        if missing:
            raise ExportError(f"source image {name(d)} lacks {', '.join(missing)}: cannot reference it from a SEG/SR")
    series = {d.get("SeriesInstanceUID") for d in dss}
    if len(series) > 1:
        raise ExportError(f"source images come from {len(series)} series ({', '.join(sorted(series))}); give one")
    frames = {d.get("FrameOfReferenceUID") for d in dss}
    if len(frames) > 1:
        raise ExportError(f"source series {dss[0].get('SeriesInstanceUID')} has {len(frames)} FrameOfReferenceUIDs")


def _in_volume_order(by_uid: Mapping[str, Any], volume: Volume) -> list[Any]:
    if not volume.source_sop_instance_uids:
        raise ExportError(
            f"volume of series {volume.series_instance_uid or '?'} does not record its source instances "
            "(Volume.source_sop_instance_uids is empty)"
        )
    ordered = []
    for k, uid in enumerate(volume.source_sop_instance_uids):
        if uid not in by_uid:
            raise ExportError(f"slice k={k} comes from instance {uid}, which is not among the source images given")
        ordered.append(by_uid[uid])
    return ordered


class SeriesHeaders:
    """The analysed series as the scan read it, for export without reading every header again.

    An exported object copies attributes (patient, study, equipment) from a few source images only:
    the first slice, the first source image of the SEG and the key-image slices. Every other slice is
    named by its UIDs (the SEG's Referenced Series and per-frame derivation, the SR's evidence) and, for
    SEG frames, its position. So :meth:`datasets` reads the full header of those few slices and gives
    the others a reference-only dataset built from the values the scan already decoded (positions as
    the file writes them): for a 300-slice CT with five nodules 7 header reads instead of 300
    (~0.4 s of CPU in a pipeline run).

    The attributes every source must have are checked here, on all slices, from the scan's values,
    with the same errors as :func:`source_datasets`."""

    def __init__(self, instances: Sequence[Any], volume: Volume) -> None:
        """``instances``: the series' :class:`~MedImgAILib.dicom.scan.InstanceHeader` objects."""
        _check_headers(instances, lambda h: h.sop_instance_uid or h.path)
        self.volume = volume
        self._ordered = _in_volume_order({h.sop_instance_uid: h for h in instances}, volume)

    def datasets(self, full: Optional[Iterable[int]] = None) -> list[Dataset]:
        """One dataset per slice in the volume's k order: the file's own header for the slices in
        ``full`` (all when None), a reference-only dataset for the rest."""
        n = len(self._ordered)
        wanted = range(n) if full is None else {int(k) for k in full if 0 <= int(k) < n}
        read: dict[str, Dataset] = {}  # by instance: a multi-frame source is read once
        uids: dict[tuple[int, str], DataElement] = {}
        out: list[Dataset] = []
        for k, h in enumerate(self._ordered):
            if k in wanted or h.sop_instance_uid in read:
                if h.sop_instance_uid not in read:
                    read[h.sop_instance_uid] = _sanitized(h.dataset)
                out.append(read[h.sop_instance_uid])
            else:
                out.append(_reference_only(h, uids))
        return out


#: what a reference-only dataset holds (see :class:`SeriesHeaders`): the references and the grid
_REFERENCE_ONLY = tuple((kw, tag, dictionary_VR(tag)) for kw, tag in ((kw, tag_for_keyword(kw)) for kw in REQUIRED_SOURCE_TAGS))


def _reference_only(h: Any, uids: dict[tuple[int, str], DataElement]) -> Dataset:
    """The UIDs (which every object reads) as values pydicom takes without checking them again (the
    scan read them from the file), one element per value shared by the datasets of one call
    (``uids``; study, series, class and frame of reference are the same for all, and nothing changes
    these datasets); the grid as raw little-endian bytes, decoded only when read (most never are).
    Building ~300 datasets element by element through pydicom's value checks cost ~50 ms, and
    converting raw UIDs on first read another ~30 ms."""
    items = {}
    for kw, tag, vr in _REFERENCE_ONLY:
        value = h.get(kw)
        if vr == "UI":
            elem = uids.get((tag, value))
            if elem is None:
                elem = uids[(tag, value)] = DataElement(BaseTag(tag), "UI", UID(value), already_converted=True)
            items[elem.tag] = elem
            continue
        if vr == "US":
            raw = struct.pack("<H", int(value))
        elif vr == "DS":  # the file's own text where the scan kept it: the SEG copies positions verbatim
            values = [value] if isinstance(value, (int, float, str)) else value  # scan values or a pydicom MultiValue
            raw = (h.text(kw) or "\\".join(_ds_text(float(v)) for v in values)).encode()
        else:
            raw = str(value).encode()
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        items[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, len(raw), raw, 0, False, True)
    return Dataset(items)


def _ds_text(x: float) -> str:
    text = repr(x)
    return text if len(text) <= 16 else format_number_as_ds(x)


def source_datasets(
    sources: "Iterable[Dataset | str | os.PathLike[str]] | SeriesHeaders",
    volume: Optional[Volume] = None,
    *,
    full: Optional[Iterable[int]] = None,
) -> list[Dataset]:
    """The source series' datasets (headers are enough), checked, in the Volume's k order.

    ``sources`` are files or datasets (all read and checked), or a :class:`SeriesHeaders` (``full``
    then says which slices need their whole header; the rest are reference-only).
    Raises ExportError naming the instance and the missing tag, or the slice that has no source."""
    if isinstance(sources, SeriesHeaders):
        if volume is not None and volume.source_sop_instance_uids != sources.volume.source_sop_instance_uids:
            raise ExportError(f"the series headers given are not those of series {volume.series_instance_uid or '?'}")
        return sources.datasets(full)
    dss = [_sanitized(_ds(s)) for s in sources]
    _check_headers(dss, lambda d: d.get("SOPInstanceUID", "?"))
    if volume is None:
        return dss
    return _in_volume_order({d.SOPInstanceUID: d for d in dss}, volume)


def check_label_grid(labels: Volume, sources: Sequence[Dataset]) -> None:
    nk, nj, ni = labels.array.shape
    if nk != len(sources) or (nj, ni) != (int(sources[0].Rows), int(sources[0].Columns)):
        raise ExportError(
            f"label map {labels.array.shape} [k, j, i] does not match source series "
            f"{sources[0].SeriesInstanceUID} ({len(sources)} x {sources[0].Rows} x {sources[0].Columns}): "
            "resample the model output to the source grid"
        )
    if labels.frame_of_reference_uid and labels.frame_of_reference_uid != sources[0].FrameOfReferenceUID:
        raise ExportError(
            f"label map frame of reference {labels.frame_of_reference_uid} differs from the source series' "
            f"{sources[0].FrameOfReferenceUID}"
        )
    # positions: the label map's affine must put slice k where source k is
    for k in (0, nk - 1):
        ipp = np.asarray(sources[k].ImagePositionPatient, dtype=np.float64)
        if not np.allclose(labels.ijk_to_lps([0, 0, k]), ipp, atol=0.01):
            raise ExportError(
                f"label map slice k={k} lies at {labels.ijk_to_lps([0, 0, k]).round(3).tolist()} but source "
                f"instance {sources[k].SOPInstanceUID} at {ipp.round(3).tolist()}"
            )


@contextlib.contextmanager
def quiet_phi_warnings():
    """highdicom warns about unusual person names *with the name in the message*: keep PHI out of
    ordinary logs by silencing exactly that warning while objects are built."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*unlikely to represent the intended person name.*")
        yield


def write_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write to a temporary name in the target folder, fsync, then rename: never a partial object."""
    from ..fileio import atomic_output

    path = Path(path)
    preencode_sequences(ds)  # same bytes as pydicom's writer, a fraction of its time
    with atomic_output(path) as fh:
        ds.save_as(fh, enforce_file_format=True)
    return path


def hd_code(c: Code | None, what: str):
    """results.Code -> highdicom CodedConcept, or ExportError naming what lacks a code."""
    from highdicom.sr import CodedConcept

    if c is None or not c.value or not c.scheme or not c.meaning:
        raise ExportError(f"{what} has no code (value, scheme and meaning are needed for DICOM export)")
    return CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def add_private_scheme(ds: Dataset) -> None:
    """Declare the private coding scheme in the object (CodingSchemeIdentificationSequence) when used."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "MedImgAI local concepts"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    seq = list(ds.get("CodingSchemeIdentificationSequence", []))
    if not any(i.get("CodingSchemeDesignator") == PRIVATE_SCHEME for i in seq):
        seq.append(item)
    ds.CodingSchemeIdentificationSequence = seq


def add_related_series(ds: Dataset, study_uid: str, series_uids: Sequence[str]) -> None:
    """General Series Module's Related Series Sequence: how SEG, SR and key images name each other
    at series level (Purpose of Reference is Type 2 and left empty: CID 7210 has no fitting concept)."""
    items = []
    for uid in series_uids:
        it = Dataset()
        it.StudyInstanceUID = study_uid
        it.SeriesInstanceUID = uid
        it.PurposeOfReferenceCodeSequence = []
        items.append(it)
    ds.RelatedSeriesSequence = items
