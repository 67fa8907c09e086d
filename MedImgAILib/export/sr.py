"""SR TID 1500 Measurement Report (highdicom Comprehensive 3D SR).

One TID 1411 volumetric measurement group per finding: tracking identifier + UID (the same UID as
its SEG segment), finding type and site codes, the SEG segment it measures, volume, long / short /
mean diameter, maximal 3D diameter, mean and SD attenuation; the rule categories as qualitative
evaluations and their recommendation as a TEXT item. Study-level measurements (e.g. eTIV) form one
TID 1501 group. Observer context: the device (model) and, once a radiologist confirms, the person.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.sr.codedict import codes

from ..errors import ExportError
from ..results import Category, Code, Finding
from .seg import reference_sequence
from .common import quiet_phi_warnings, PRIVATE_SCHEME, DeviceInfo, ExportUIDs, add_private_scheme, hd_code, write_atomic

# The concepts every measurement group names, as highdicom's CodedConcept once: given pydicom Codes,
# highdicom converts each use into a new dataset (~0.1 ms a measurement). Items share these
# datasets, which nothing changes after the report is built; the bytes written are the same.
MM = CodedConcept.from_code(codes.UCUM.Millimeter)
MM3 = CodedConcept.from_code(codes.UCUM.CubicMillimeter)
HU = CodedConcept.from_code(codes.UCUM.HounsfieldUnit)
ATTENUATION = CodedConcept.from_code(codes.DCM.AttenuationCoefficient)
_VOLUME = CodedConcept.from_code(codes.SCT.Volume)
_LONG_AXIS = CodedConcept.from_code(codes.SCT.LongAxis)
_SHORT_AXIS = CodedConcept.from_code(codes.SCT.ShortAxis)
_DIAMETER = CodedConcept.from_code(codes.SCT.Diameter)
_MEAN = CodedConcept.from_code(codes.SCT.Mean)
_MAXIMUM = CodedConcept.from_code(codes.SCT.Maximum)
_SD = CodedConcept.from_code(codes.SCT.StandardDeviation)
_RECOMMENDATION = CodedConcept.from_code(codes.DCM.Recommendation)

#: (system, version) -> concept name of the category evaluation. No public terminology codes the
#: Lung-RADS / Fleischner category itself, so the concepts are in the private scheme 99MEDIMGAI.
def category_concept(cat: Category) -> CodedConcept:
    key = "".join(ch for ch in f"{cat.system}{cat.version}".upper() if ch.isalnum())[:16]
    return CodedConcept(value=f"{key}CAT", scheme_designator=PRIVATE_SCHEME, meaning=f"{cat.system} {cat.version} category"[:64])


def category_value(cat: Category) -> CodedConcept:
    """The category's own code when the rule set gives one, else a private code "<system> <value>"."""
    if cat.codes:
        return hd_code(cat.codes[0], f"category {cat.system} {cat.value}")
    key = "".join(ch for ch in f"{cat.system}-{cat.value}".upper() if ch.isalnum() or ch == "-")[:16]
    return CodedConcept(value=key, scheme_designator=PRIVATE_SCHEME, meaning=f"{cat.system} {cat.value}"[:64])


def _unit_for(key: str) -> Code:
    k = key.lower()
    if k.endswith("_mm3"):
        return Code(value="mm3", scheme="UCUM", meaning="cubic millimeter")
    if k.endswith("_ml"):
        return Code(value="ml", scheme="UCUM", meaning="milliliter")
    if k.endswith("_mm"):
        return Code(value="mm", scheme="UCUM", meaning="millimeter")
    if k.endswith("_hu"):
        return Code(value="[hnsf'U]", scheme="UCUM", meaning="Hounsfield unit")
    return Code(value="1", scheme="UCUM", meaning="no units")


def _measurement(name, value: Optional[float], unit, derivation=None) -> Optional[hd.sr.Measurement]:
    if value is None:
        return None
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation)


def finding_group(
    f: Finding,
    seg: Dataset,
    segment_number: int,
    source_series_uid: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    if not f.tracking_uid:
        raise ExportError(f"finding {f.id} has no tracking UID: export the SEG first (it assigns them)")
    finding_type = hd_code(f.finding_code, f"finding {f.id} ({f.label}) type")
    sites = [hd.sr.FindingSite(anatomic_location=hd_code(f.site_code, f"finding {f.id} site"))] if f.site_code else None
    ms = [
        _measurement(_VOLUME, f.volume_mm3, MM3),
        _measurement(_LONG_AXIS, f.long_axis_mm, MM),
        _measurement(_SHORT_AXIS, f.short_axis_mm, MM),
        _measurement(_DIAMETER, f.mean_diameter_mm, MM, derivation=_MEAN),
        _measurement(_DIAMETER, f.max_3d_diameter_mm, MM, derivation=_MAXIMUM),
        _measurement(ATTENUATION, f.mean_hu, HU, derivation=_MEAN),
        _measurement(ATTENUATION, f.sd_hu, HU, derivation=_SD),
    ]
    evaluations = [hd.sr.QualitativeEvaluation(name=category_concept(c), value=category_value(c)) for c in f.categories]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=f.tracking_uid, identifier=f"{f.id} {f.label}"[:64]),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        ),
        finding_type=finding_type,
        finding_sites=sites,
        measurements=[m for m in ms if m is not None],
        qualitative_evaluations=evaluations or None,
    )
    # The recommendation: free text in the group (TID 1411 allows TEXT qualitative evaluations).
    container = group[0]
    for c in f.categories:
        if c.recommendation:
            container.ContentSequence.append(
                hd.sr.TextContentItem(
                    name=_RECOMMENDATION,
                    value=f"{c.system} {c.version} {c.value}: {c.recommendation}"[:1024],
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            )
    return group


def study_group(measurements: Mapping[str, float], tracking_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Study-level values (eTIV, total volumes...) as a TID 1501 group; names are private concepts
    named by the key, units from its suffix (_mm3, _ml, _mm, _hu)."""
    ms = []
    for key, value in measurements.items():
        name = CodedConcept(value=key[:16], scheme_designator=PRIVATE_SCHEME, meaning=key.replace("_", " ")[:64])
        ms.append(hd.sr.Measurement(name=name, value=float(value), unit=hd_code(_unit_for(key), key)))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="study measurements"),
        measurements=ms,
    )


def build_sr(
    findings: Sequence[Finding],
    seg: Optional[Dataset],
    sources: Sequence[Dataset],
    device: DeviceInfo,
    uids: Optional[ExportUIDs] = None,
    *,
    segment_numbers: Optional[Sequence[int]] = None,
    study_measurements: Optional[Mapping[str, float]] = None,
    person_observer: Optional[str] = None,
    verifying_organization: str = "",
    procedure: Code | None = None,
    series_number: int = 9002,
    extra_evidence: Sequence[Dataset] = (),
    absent_finding: Optional[Code] = None,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report for ``findings`` (segment n = findings[n-1] unless
    ``segment_numbers`` says otherwise). With ``person_observer`` (a DICOM PN, "Family^Given") the
    report names the confirming radiologist and is final and verified. Without findings and study
    measurements the report holds one group "<absent_finding>: Absent" (e.g. "Nodule: Absent")."""
    uids = uids or ExportUIDs()
    if not sources:
        raise ExportError("no source images: the SR must reference the analysed series")
    if seg is None:
        if findings:
            raise ExportError(f"{len(findings)} findings but no SEG: their measurement groups reference SEG segments")
        seg_items: list = []
    else:
        seg_items = [seg]
    segment_numbers = list(segment_numbers or range(1, len(findings) + 1))
    if len(segment_numbers) != len(findings):
        raise ExportError(f"{len(findings)} findings but {len(segment_numbers)} segment numbers")
    n_segments = len(seg.SegmentSequence) if seg is not None else 0
    for f, n in zip(findings, segment_numbers):
        assert seg is not None
        if not 1 <= n <= n_segments:
            raise ExportError(f"finding {f.id} refers to segment {n}; the SEG has {n_segments}")
        tuid = seg.SegmentSequence[n - 1].get("TrackingUID")
        if f.tracking_uid and tuid and f.tracking_uid != tuid:
            raise ExportError(f"finding {f.id} tracking UID {f.tracking_uid} differs from its SEG segment {n} ({tuid})")
    series_uid = sources[0].SeriesInstanceUID
    groups: list = [finding_group(f, seg, n, series_uid) for f, n in zip(findings, segment_numbers)]
    if study_measurements:
        groups.append(study_group(study_measurements, hd.UID()))
    if not groups:  # TID 1500 needs a group: say explicitly that the model found nothing
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="study findings"),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=hd_code(absent_finding, "absent finding") if absent_finding else codes.SCT.Lesion,
                        value=codes.SCT.Absent,
                    )
                ],
            )
        )
    device_ctx = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device.uid,
            name=device.model_id[:64],
            manufacturer_name=device.manufacturer,
            model_name=f"{device.model_id} {device.model_version}"[:64],
        ),
    )
    person_ctx = None
    if person_observer:
        person_ctx = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=person_observer),
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=person_ctx, observer_device_context=device_ctx
        ),
        procedure_reported=hd_code(procedure, "procedure") if procedure else codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    verified = bool(person_observer)
    if SHORTCUTS:
        # highdicom deep-copies the content tree, parses the copy back into content items and walks
        # it for image references (~0.1 s for 5 findings): the tree built here is used by nothing
        # else, and its only image reference is the SEG, given as evidence. So highdicom gets the
        # root container without its children, which are then set as they are (the very elements
        # highdicom sets); and one source image, whose series item then lists them all.
        root = report[0]
        content = Dataset()
        for elem in root:
            if elem.tag != _CONTENT_SEQUENCE:
                content.add(elem)
        content.ContentSequence = []
        evidence = [*seg_items, sources[0], *extra_evidence]
    else:  # highdicom's own way, kept as the reference the tests compare with
        content = report
        evidence = [*seg_items, *sources, *extra_evidence]
    with quiet_phi_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=content,
            series_instance_uid=uids.sr_series,
            series_number=series_number,
            sop_instance_uid=uids.sr_instance,
            instance_number=1,
            manufacturer=device.manufacturer,
            is_complete=True,
            is_final=verified,
            is_verified=verified,
            verifying_observer_name=person_observer if verified else None,
            verifying_organization=(verifying_organization or "Unknown") if verified else None,
            series_description=f"AI measurements {device.model_id}"[:64],
        )
    if SHORTCUTS:
        sr[_CONTENT_SEQUENCE] = root[_CONTENT_SEQUENCE]
        sr._content = hd.sr.ContentSequence([root], is_root=True)  # what sr.content returns
        _evidence_for_all_sources(sr, sources)
    if any(f.categories for f in findings) or study_measurements:
        add_private_scheme(sr)
    # The SR Document Series module has no Related Series Sequence: the SR names the SEG (content
    # and evidence) and the key images (evidence) at instance level instead.
    return sr


#: build_sr's shortcuts past highdicom's content copy and evidence search; False gives highdicom's
#: own construction, which the tests compare with (same dataset)
SHORTCUTS = True
_CONTENT_SEQUENCE = BaseTag(0x0040A730)
_REF_SOP_SEQUENCE = BaseTag(0x00081199)


def _evidence_for_all_sources(sr: Dataset, sources: Sequence[Dataset]) -> None:
    """Put every source image in the source series' evidence item, in order and once each (a
    multi-frame source is one instance for several slices), as highdicom does for the evidence it
    is given."""
    series_uid = sources[0].SeriesInstanceUID
    seen: set[str] = set()
    pairs = []
    for s in sources:
        if s.SOPInstanceUID not in seen:
            seen.add(s.SOPInstanceUID)
            pairs.append((s.SOPClassUID, s.SOPInstanceUID))
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study_item in sr.get(keyword, []):
            for series_item in study_item.ReferencedSeriesSequence:
                if series_item.SeriesInstanceUID == series_uid:
                    series_item[_REF_SOP_SEQUENCE] = reference_sequence(_REF_SOP_SEQUENCE, pairs)
                    return
    raise ExportError(f"the SR records no evidence item for source series {series_uid}")


def write_sr(sr: Dataset, path: str | os.PathLike[str]) -> Path:
    return write_atomic(sr, path)
