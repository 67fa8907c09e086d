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
from typing import Iterable, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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


class CheckedSources(list):
    """What :func:`source_datasets` returns: the datasets, checked, in the order of ``order`` (the
    SOP Instance UIDs of the volume's slices; empty when no volume was given). Given back to
    :func:`source_datasets` for the same volume it is returned as it is (the pipeline reads and checks
    the headers beside inference; the export must not pay for the check twice)."""

    def __init__(self, items: Iterable[Dataset], order: Sequence[str] = ()) -> None:
        super().__init__(items)
        self.order = tuple(order)


def source_datasets(
    sources: Iterable[Dataset | str | os.PathLike[str]], volume: Optional[Volume] = None
) -> CheckedSources:
    """The source series' datasets (headers are enough), checked, in the Volume's k order.

    Raises ExportError naming the instance and the missing tag, or the slice that has no source."""
    if isinstance(sources, CheckedSources) and (
        sources.order == tuple(volume.source_sop_instance_uids) if volume is not None else True
    ):
        return sources
    dss = [_sanitized(_ds(s)) for s in sources]
    if not dss:
        raise ExportError("no source images given: SEG/SR/key images must reference the analysed series")
    for d in dss:
        missing = [t for t in REQUIRED_SOURCE_TAGS if t not in d or d.get(t) in (None, "")]
        if missing:
            uid = d.get("SOPInstanceUID", "?")
            raise ExportError(f"source image {uid} lacks {', '.join(missing)}: cannot reference it from a SEG/SR")
    series = {d.SeriesInstanceUID for d in dss}
    if len(series) > 1:
        raise ExportError(f"source images come from {len(series)} series ({', '.join(sorted(series))}); give one")
    frames = {d.FrameOfReferenceUID for d in dss}
    if len(frames) > 1:
        raise ExportError(f"source series {dss[0].SeriesInstanceUID} has {len(frames)} FrameOfReferenceUIDs")
    if volume is None:
        return CheckedSources(dss)
    by_uid = {d.SOPInstanceUID: d for d in dss}
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
    return CheckedSources(ordered, volume.source_sop_instance_uids)


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
