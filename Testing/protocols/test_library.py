"""The protocol library: every shipped protocol validates and documents its source, a broken file is
named with its field, and series are matched to the protocol a technologist would pick."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from MedImgAILib.dicom.metadata import extract_metadata
from MedImgAILib.errors import ContentError
from MedImgAILib.protocols import ProtocolLibrary, UnknownProtocolError, default_library
from MedImgAILib.resources import resource_path

SHIPPED = ["ct-chest-ldct-screening", "ct-chest-routine", "ct-head-noncontrast", "mr-brain-3d-t1-volumetric"]


def test_shipped_protocols_load_with_source_effective_date_owner_and_changelog():
    lib = default_library()
    assert set(SHIPPED) <= set(lib.ids())
    for p in lib:
        assert p.source and all(len(s.citation) > 20 for s in p.source)
        assert p.effective.year >= 2024
        assert p.owner
        assert p.changelog[-1].version == p.version
        assert any(c.level == "required" for c in p.criteria)


def test_ldct_follows_the_acr_numbers():
    p = default_library().get("ct-chest-ldct-screening")
    c = {x.name: x for x in p.criteria}
    assert (c["slice_thickness"].max, c["slice_thickness"].preferred_max) == (2.5, 1.0)
    assert (c["kvp"].min, c["kvp"].max) == (100, 140)
    assert c["ctdi_vol"].max == 3.0
    assert c["reconstruction_interval"].field == "derived.interval_to_thickness_ratio" and c["reconstruction_interval"].max == 1.0
    assert c["lung_coverage"].equals is True


def _write_variant(tmp_path: Path, mutate) -> Path:
    src = resource_path("protocols", "ct-chest-routine.yaml")
    data = yaml.safe_load(src.read_text())
    mutate(data)
    d = tmp_path / "lib"
    d.mkdir(exist_ok=True)
    f = d / "ct-chest-routine.yaml"
    f.write_text(yaml.safe_dump(data))
    return d


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.pop("source"), "source"),
        (lambda d: d["criteria"][0].update(max=None, min=None), "criteria[slice_thickness]"),
        (lambda d: d["criteria"][0].update(field="acquisition.slice_thicknes_mm"), "criteria[slice_thickness].field"),
        (lambda d: d["criteria"][2].update(min=150), "criteria[kvp]"),
        (lambda d: d["match"].update(description_patterns=["(chest"]), "match.description_patterns"),
        (lambda d: d.update(version="1.1.0"), "(top level)"),  # changelog not updated
        (lambda d: d.update(id="ct-chest-other"), "id"),
        (lambda d: d["criteria"].append({"name": "x", "field": "iq.sharpness", "max": 1}), "criteria[x]"),
    ],
)
def test_invalid_protocol_file_names_file_and_field(tmp_path, mutate, field):
    d = _write_variant(tmp_path, mutate)
    with pytest.raises(ContentError) as exc:
        ProtocolLibrary.load(d)
    msg = str(exc.value)
    assert "ct-chest-routine.yaml" in msg
    assert f"field {field}" in msg, msg


def test_yaml_syntax_error_is_a_content_error(tmp_path):
    d = tmp_path / "lib"
    d.mkdir()
    (d / "bad.yaml").write_text("id: [unclosed\n")
    with pytest.raises(ContentError, match="bad.yaml.*not valid YAML"):
        ProtocolLibrary.load(d)


def test_unknown_protocol_lists_known_ids():
    with pytest.raises(UnknownProtocolError, match="ct-chest-routine"):
        default_library().get("ct-knee")


def _ct(**kw) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _match(ds):
    return default_library().match(extract_metadata(ds))


def test_match_by_description_prefers_screening_over_routine():
    m = _match(_ct(BodyPartExamined="CHEST", SeriesDescription="Lung Screening LD 1.0"))
    assert m.protocol.id == "ct-chest-ldct-screening"
    assert m.matched_by == "description"
    assert "body_part=CHEST" in m.evidence


def test_match_routine_chest_and_exclusions():
    m = _match(_ct(BodyPartExamined="CHEST", SeriesDescription="CHEST W CONTRAST 1.25mm"))
    assert m.protocol.id == "ct-chest-routine"
    assert _match(_ct(BodyPartExamined="CHEST", SeriesDescription="CTA chest PE")) is None


def test_match_by_procedure_code_beats_description():
    ds = _ct(SeriesDescription="Thorax 1mm", BodyPartExamined="CHEST")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "71271", "C4", "CT thorax lung cancer screening"
    ds.ProcedureCodeSequence = Sequence([item])
    m = _match(ds)
    assert m.protocol.id == "ct-chest-ldct-screening"
    assert m.matched_by == "procedure_code"


def test_match_by_body_part_alone_and_head():
    m = _match(_ct(BodyPartExamined="HEAD", SeriesDescription=""))
    assert m.protocol.id == "ct-head-noncontrast" and m.matched_by == "body_part"
    assert _match(_ct(BodyPartExamined="HEAD", SeriesDescription="Head W CONTRAST")) is None


def test_match_mr_t1_volumetric():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    ds.SeriesDescription = "t1_mprage_sag_p2_iso"
    m = _match(ds)
    assert m.protocol.id == "mr-brain-3d-t1-volumetric" and m.matched_by == "description"


def test_bare_test_files_match_nothing_and_candidates_limit_the_choice():
    assert _match(_ct()) is None  # CT_small has no body part or description
    ds = _ct(BodyPartExamined="CHEST", SeriesDescription="Lung Screening")
    m = default_library().match(extract_metadata(ds), candidates=["ct-chest-routine"])
    assert m is None  # routine excludes screening descriptions; the model card allows only routine


def test_chest_body_part_alone_is_routine_not_screening():
    m = _match(_ct(BodyPartExamined="CHEST", SeriesDescription="1.25mm"))
    assert m.protocol.id == "ct-chest-routine" and m.matched_by == "body_part"
