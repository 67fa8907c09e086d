"""Query/retrieve over the listener's store: C-FIND matching and the records behind C-GET/C-MOVE.

The matching follows PS3.4 C.2.2.2 for the keys a viewer or a PACS asks for: single value, UID list
(``a\\b``), wildcard (``*``, ``?``) and date/time ranges (``A-B``, ``A-``, ``-B``). At STUDY level one
answer per study (never one per instance) with ModalitiesInStudy, SOPClassesInStudy and the
NumberOf...Related... counts computed from the store.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from typing import Iterable

from pydicom.dataset import Dataset

from .storage import InstanceRecord

LEVEL_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
_RANGE_KEYS = {"StudyDate", "StudyTime", "SeriesDate", "PatientBirthDate"}
_COMPUTED = {
    "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
}
#: attributes that belong to each level (an answer carries its level's and those above)
_LEVEL_ATTRS = {
    "PATIENT": {"PatientID", "PatientName", "PatientBirthDate", "PatientSex"},
    "STUDY": {"StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName"},
    "SERIES": {"SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SeriesDate",
               "BodyPartExamined"},
    "IMAGE": {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"},
}
_ORDER = ["PATIENT", "STUDY", "SERIES", "IMAGE"]


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue":
        return [str(v) for v in value]
    return [v for v in str(value).split("\\")]


def _match_one(keyword: str, query: str, value: str) -> bool:
    if keyword in _UID_KEYS:
        return value in query.split("\\")
    if keyword in _RANGE_KEYS and "-" in query:
        lo, _, hi = query.partition("-")
        v = value.split(".")[0]
        return (not lo or v >= lo.strip()) and (not hi or v <= hi.strip() + ("999999" if keyword.endswith("Time") else ""))
    if "*" in query or "?" in query:
        pat = query.replace("[", "[[]")
        if keyword.endswith("Name"):  # PN matching is case-insensitive in practice
            return fnmatch.fnmatchcase(value.upper(), pat.upper())
        return fnmatch.fnmatchcase(value, pat)
    if keyword.endswith("Name"):
        return value.strip().upper() == query.strip().upper()
    return value.strip() == query.strip()


def matches(rec_attrs: dict[str, str], query: dict[str, str]) -> bool:
    for kw, q in query.items():
        if kw in _COMPUTED or kw == "ModalitiesInStudy":
            continue
        if not _match_one(kw, q, rec_attrs.get(kw, "")):
            return False
    return True


def matching_keys(identifier: Dataset) -> dict[str, str]:
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", "") or elem.VR == "SQ":
            continue
        if elem.value in (None, "", b"") or (isinstance(elem.value, (list, tuple)) and not elem.value):
            continue
        keys[elem.keyword] = "\\".join(_values(elem.value))
    return keys


def select_instances(records: Iterable[InstanceRecord], identifier: Dataset) -> list[InstanceRecord]:
    """Every stored instance below the identifier's level that matches its keys (for C-GET/C-MOVE)."""
    query = matching_keys(identifier)
    mods = query.pop("ModalitiesInStudy", None)
    out = [r for r in records if matches(r.attrs, query)]
    if mods:
        wanted = set(mods.split("\\"))
        studies = {r.attrs.get("StudyInstanceUID") for r in out if r.attrs.get("Modality") in wanted}
        out = [r for r in out if r.attrs.get("StudyInstanceUID") in studies]
    return sorted(out, key=lambda r: (r.attrs.get("SeriesInstanceUID", ""), _int(r.attrs.get("InstanceNumber")), r.sop_uid))


def _int(v: str | None) -> int:
    try:
        return int(float(v or 0))
    except ValueError:
        return 0


def find_answers(records: Iterable[InstanceRecord], identifier: Dataset) -> list[Dataset]:
    """C-FIND answers: one dataset per matching entity at the identifier's level."""
    level = str(identifier.get("QueryRetrieveLevel", "STUDY")).upper()
    if level not in LEVEL_KEY:
        raise ValueError(f"unsupported QueryRetrieveLevel {level!r}")
    query = matching_keys(identifier)
    mods = query.pop("ModalitiesInStudy", None)
    allowed = set().union(*(_LEVEL_ATTRS[lv] for lv in _ORDER[: _ORDER.index(level) + 1]))
    # Keys below the level cannot be matched (PS3.4 C.2.2.1.2); ignore them rather than fail.
    query = {k: v for k, v in query.items() if k in allowed}
    groups: dict[str, list[InstanceRecord]] = defaultdict(list)
    for r in records:
        if matches(r.attrs, query):
            groups[r.attrs.get(LEVEL_KEY[level], "")].append(r)
    answers = []
    for key, recs in sorted(groups.items()):
        if not key:
            continue
        modalities = sorted({r.attrs.get("Modality", "") for r in recs} - {""})
        if mods and not set(mods.split("\\")) & set(modalities):
            continue
        first = recs[0].attrs
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for elem in identifier:
            kw = elem.keyword
            if kw in ("QueryRetrieveLevel", "") or elem.VR == "SQ":
                continue
            if kw == "SpecificCharacterSet":
                ds.SpecificCharacterSet = elem.value
            elif kw == "ModalitiesInStudy":
                ds.ModalitiesInStudy = modalities
            elif kw == "SOPClassesInStudy":
                ds.SOPClassesInStudy = sorted({r.attrs.get("SOPClassUID", "") for r in recs} - {""})
            elif kw in ("NumberOfStudyRelatedSeries", "NumberOfPatientRelatedSeries"):
                setattr(ds, kw, len({r.attrs.get("SeriesInstanceUID") for r in recs}))
            elif kw in ("NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances", "NumberOfPatientRelatedInstances"):
                setattr(ds, kw, len(recs))
            elif kw == "NumberOfPatientRelatedStudies":
                ds.NumberOfPatientRelatedStudies = len({r.attrs.get("StudyInstanceUID") for r in recs})
            elif kw in allowed:
                setattr(ds, kw, first.get(kw, ""))
            else:
                setattr(ds, kw, None)  # a key we do not hold: returned empty, as PS3.4 allows
        setattr(ds, LEVEL_KEY[level], key)
        answers.append(ds)
    return answers
