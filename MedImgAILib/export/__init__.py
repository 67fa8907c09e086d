"""Export: DICOM SEG, SR TID 1500 and key images (Secondary Capture) that reference the source
series and each other:

- SEG -> source images (per frame, Source Image Sequence) and, at series level, the SR and key-image
  series (Related Series Sequence);
- SR -> each SEG segment it measures (ReferencedSegment, by segment number and tracking UID), the
  source series, and SEG + source + key images as evidence;
- key images -> their source slice (Source Image Sequence) and the SEG and SR series.

``export_study`` writes all three into a folder atomically (temp names, then renames; on any error
nothing looks final). ``export_results`` + ``export_key_images`` do the same in two steps, for a
caller that stores the SEG and SR before it draws the key images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from ..findings.extract import foreground_box
from ..results import Finding
from ..volume import Volume
# highdicom's IOD look-up, memoized for every object built here (the package loads before any of its modules)
from . import _highdicom  # noqa: F401
from .common import DeviceInfo, ExportUIDs, SeriesHeaders, source_datasets, write_atomic
from .key_images import build_key_images, render_key_image, write_key_images
from .seg import SegmentSpec, build_seg, segments_from_findings, segments_from_labels, write_seg
from .sr import build_sr, write_sr


@dataclass
class ExportedObjects:
    seg: Optional[Path]
    sr: Path
    key_images: list[Path] = field(default_factory=list)
    uids: ExportUIDs = field(default_factory=ExportUIDs)
    #: the source headers the objects were built from (in the image's k order), for the key images
    #: that :func:`export_key_images` draws after :func:`export_results`
    sources: Sequence[Dataset] = field(default_factory=list, repr=False)


def export_study(
    out_dir: str | os.PathLike[str],
    image: Volume,
    instance_map: np.ndarray,
    findings: Sequence[Finding],
    sources: Sequence[Dataset | str | os.PathLike[str]] | SeriesHeaders,
    device: DeviceInfo,
    *,
    label_specs: Sequence = (),
    study_measurements: Optional[Mapping[str, float]] = None,
    person_observer: Optional[str] = None,
    key_images: bool = True,
) -> ExportedObjects:
    """SEG (one segment per finding: its ``instance_value`` voxels in ``instance_map``), SR and key images
    into ``out_dir`` as seg.dcm, sr.dcm and key_images/key_NNN.dcm. Everything is built before anything
    is written: a failing build leaves nothing behind."""
    return _export(out_dir, image, instance_map, findings, sources, device, label_specs, study_measurements,
                   person_observer, key_images, draw_key_images=key_images)


def export_results(
    out_dir: str | os.PathLike[str],
    image: Volume,
    instance_map: np.ndarray,
    findings: Sequence[Finding],
    sources: Sequence[Dataset | str | os.PathLike[str]] | SeriesHeaders,
    device: DeviceInfo,
    *,
    label_specs: Sequence = (),
    study_measurements: Optional[Mapping[str, float]] = None,
    person_observer: Optional[str] = None,
    key_images: bool = True,
) -> ExportedObjects:
    """The clinical result alone: seg.dcm and sr.dcm, for a caller that stores them before it draws
    the key images (the pipeline: key images are for viewers without SEG support, and rendering them
    should not delay the result). With ``key_images`` the SR already lists them as evidence and the
    SEG names their series; :func:`export_key_images` must then write them with the returned UIDs."""
    return _export(out_dir, image, instance_map, findings, sources, device, label_specs, study_measurements,
                   person_observer, key_images, draw_key_images=False)


def _export(out_dir, image, instance_map, findings, sources, device, label_specs, study_measurements,
            person_observer, key_images: bool, *, draw_key_images: bool) -> ExportedObjects:
    """:func:`export_study` (``draw_key_images``) and :func:`export_results` (without): everything
    built before anything is written."""
    # the labelled voxels' box, found once: which slice headers are read in full, and the SEG's extent
    box = foreground_box(instance_map) if findings and instance_map.size else None
    uids = ExportUIDs()
    srcs = source_datasets(sources, image, full=_slices_copied_from(box, findings, key_images))
    seg, sr = _build_results(image, instance_map, box, findings, srcs, device, uids, label_specs,
                             study_measurements, person_observer, key_images)
    kis = _build_key_images(image, instance_map, findings, srcs, device, uids) if draw_key_images else []
    out = Path(out_dir)
    ki_paths = write_key_images(kis, out / "key_images") if kis else []
    seg_path = write_seg(seg, out / "seg.dcm") if seg is not None else None
    return ExportedObjects(seg=seg_path, sr=write_sr(sr, out / "sr.dcm"), key_images=ki_paths, uids=uids,
                           sources=srcs)


def export_key_images(
    out_dir: str | os.PathLike[str],
    results: ExportedObjects,
    image: Volume,
    instance_map: np.ndarray,
    findings: Sequence[Finding],
    device: DeviceInfo,
) -> list[Path]:
    """The key images that :func:`export_results` announced, into ``out_dir``/key_images; also
    recorded in ``results.key_images``."""
    kis = _build_key_images(image, instance_map, findings, results.sources, device, results.uids)
    results.key_images = write_key_images(kis, Path(out_dir) / "key_images") if kis else []
    return results.key_images


def _build_results(image, instance_map, box, findings, srcs, device, uids, label_specs, study_measurements,
                   person_observer, key_images) -> tuple[Optional[Dataset], Dataset]:
    seg = None
    if findings:  # a study without findings gets an SR that says so, and no SEG
        seg = build_seg(
            image.with_array(instance_map), srcs, segments_from_findings(findings, label_specs), device, uids,
            related_series=[uids.sr_series] + ([uids.key_image_series] if key_images else []), foreground=box,
        )
    sr = build_sr(findings, seg, srcs, device, uids, study_measurements=study_measurements,
                  person_observer=person_observer,
                  extra_evidence=_key_image_references(findings, srcs, uids) if key_images else (),
                  absent_finding=label_specs[0].finding_code if label_specs else None)
    return seg, sr


def _build_key_images(image, instance_map, findings, srcs, device, uids) -> list[Dataset]:
    return build_key_images(image, findings, srcs, device, uids, instance_map=instance_map,
                            related_series=[uids.seg_series, uids.sr_series])


def _key_image_references(findings: Sequence[Finding], srcs: Sequence[Dataset], uids: ExportUIDs) -> list[Dataset]:
    """The key images as the SR's evidence names them (study, series, class, instance), before they
    are drawn: one per finding, numbered as :func:`build_key_images` numbers them."""
    refs = []
    for n, _ in enumerate(findings, start=1):
        ref = Dataset()
        ref.StudyInstanceUID = srcs[0].StudyInstanceUID
        ref.SeriesInstanceUID = uids.key_image_series
        ref.SOPClassUID = SecondaryCaptureImageStorage
        ref.SOPInstanceUID = uids.key_image(n)
        refs.append(ref)
    return refs


def _slices_copied_from(box: Optional[tuple[slice, ...]], findings: Sequence[Finding], key_images: bool) -> list[int]:
    """The slices whose headers the objects copy attributes from; the rest are referenced by UID.
    The first slice (the SR's source series), the first slice holding a segmented voxel (highdicom
    copies patient, study and equipment from the first of the SEG's source images; of the others it
    takes the UIDs and the position, which reference-only datasets carry as the file writes them)
    and the key-image slices (each key image copies its slice's header)."""
    first_labelled = [box[0].start] if box is not None else []
    keys = [int(f.slice_index) for f in findings if f.slice_index is not None] if key_images else []
    return sorted({0, *first_labelled, *keys})


__all__ = [
    "DeviceInfo",
    "ExportUIDs",
    "ExportedObjects",
    "SegmentSpec",
    "SeriesHeaders",
    "build_key_images",
    "build_seg",
    "build_sr",
    "export_key_images",
    "export_results",
    "export_study",
    "render_key_image",
    "segments_from_findings",
    "segments_from_labels",
    "source_datasets",
    "write_atomic",
    "write_key_images",
    "write_seg",
    "write_sr",
]
