"""What the PACS, worklist and Analyze panels send and show (MedImgAILib.scene.panels)."""

from __future__ import annotations

import pytest

from MedImgAILib.scene.panels import (
    STUDY_COLUMNS, WORKLIST_COLUMNS, PanelInputError, models_for_modality, study_filters, study_rows, worklist_rows,
)


def test_patient_field_is_a_name_when_it_looks_like_one_else_an_id():
    assert study_filters(patient="PHANTOM-0042") == {"patient_id": "PHANTOM-0042"}
    assert study_filters(patient="Doe^J*") == {"patient_name": "Doe^J*"}
    assert study_filters(patient="Doe, Jane") == {"patient_name": "Doe^Jane"}
    assert study_filters(patient="  ") == {}


@pytest.mark.parametrize("text,expected", [
    ("20261129", "20261129"), ("2026-11-29", "20261129"), ("20260101-20261231", "20260101-20261231"),
    ("20260101-", "20260101-"), ("-20261231", "-20261231"),
])
def test_dates_and_ranges(text, expected):
    assert study_filters(date=text) == {"study_date": expected}


@pytest.mark.parametrize("bad", ["29.11.2026", "2026", "-", "20261129-2026"])
def test_a_bad_date_says_what_to_type(bad):
    with pytest.raises(PanelInputError, match="YYYYMMDD"):
        study_filters(date=bad)


def test_modality_and_accession():
    assert study_filters(modality=" ct ", accession="ACC1") == {"modality": "CT", "accession": "ACC1"}


def test_study_rows_follow_the_columns():
    rec = {"patient_name": "Doe^Jane", "patient_id": "P1", "study_date": "20261129", "modalities": ["CT", "SR"],
           "accession_number": "A1", "study_description": "CT CHEST", "n_series": 3, "n_instances": 120,
           "study_uid": "1.2.3"}
    (row,) = study_rows([rec])
    assert dict(zip(STUDY_COLUMNS, row)) == {"Patient": "Doe Jane", "Patient ID": "P1", "Date": "2026-11-29",
                                             "Modalities": "CT/SR", "Accession": "A1", "Description": "CT CHEST",
                                             "Series": "3", "Images": "120"}
    assert study_rows([{}]) == [["", "", "", "", "", "", "", ""]]


def test_worklist_rows_keep_the_store_order(tmp_path):
    from MedImgAILib.results import AnalysisResult, Category, Finding
    from MedImgAILib.tracking import ResultStore

    store = ResultStore(tmp_path / "r.db")
    for value in ("2", "4B", "3"):
        f = Finding(id="F1", label="nodule", categories=[Category(system="Lung-RADS", version="v2022", value=value)])
        store.record_result(AnalysisResult(findings=[f], study_categories=f.categories), study_date="2026-11-29")
    rows = worklist_rows(store.worklist())
    assert [dict(zip(WORKLIST_COLUMNS, r))["Category"] for r in rows] == ["Lung-RADS 4B", "Lung-RADS 3", "Lung-RADS 2"]


class _Card:
    def __init__(self, id, modality):
        self.id, self.modality, self.name, self.version = id, modality, id.upper(), "1.0.0"


def test_models_are_filtered_by_the_series_modality():
    cards = [_Card("ct-lung-nodule", "CT"), _Card("mr-hippocampus", "MR")]
    assert [m for m, _ in models_for_modality("CT", cards)] == ["ct-lung-nodule"]
    assert [m for m, _ in models_for_modality("mr", cards)] == ["mr-hippocampus"]
    assert len(models_for_modality(None, cards)) == 2  # not from DICOM: every model is offered
    assert models_for_modality("CT", cards)[0][1] == "CT-LUNG-NODULE (ct-lung-nodule 1.0.0)"


def test_the_shipped_cards_offer_ct_lung_nodule_for_ct():
    ids = [m for m, _ in models_for_modality("CT")]
    assert "ct-lung-nodule" in ids
    assert "ct-lung-nodule" not in [m for m, _ in models_for_modality("MR")]
