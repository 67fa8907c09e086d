"""The result store: worklist order a radiologist would want, priors without PHI, corrections."""

import sqlite3
import threading

from MedImgAILib.results import AnalysisResult, Category, Finding, ModelRef
from MedImgAILib.tracking import ResultStore, urgency_rank


def result(study: str, cat: str, system: str = "Lung-RADS", months=None) -> AnalysisResult:
    c = Category(system=system, version="v2022", value=cat, follow_up_months=months)
    return AnalysisResult(
        study_instance_uid=study, series_instance_uid=study + ".1", model=ModelRef(id="ct-lung-nodule", version="1"),
        findings=[Finding(id="F1", label="nodule", categories=[c], volume_mm3=100.0)], study_categories=[c],
    )


def test_worklist_puts_the_most_urgent_category_first(tmp_path):
    store = ResultStore(tmp_path / "t.db")
    for study, cat in [("1.1", "2"), ("1.2", "4B"), ("1.3", "3"), ("1.4", "4A"), ("1.5", "1")]:
        store.record_result(result(study, cat), patient_id="PH0001", study_date="2026-01-01")
    order = [row["study_category"] for row in store.worklist()]
    assert order == ["Lung-RADS 4B", "Lung-RADS 4A", "Lung-RADS 3", "Lung-RADS 2", "Lung-RADS 1"]


def test_fleischner_urgency_follows_the_follow_up_interval():
    soon = [Category(system="Fleischner", version="2017", value="x", follow_up_months=3)]
    late = [Category(system="Fleischner", version="2017", value="y", follow_up_months=12)]
    assert urgency_rank(soon) > urgency_rank(late) > 0


def test_priors_match_by_patient_without_storing_the_patient_id(tmp_path):
    db = tmp_path / "t.db"
    store = ResultStore(db)
    store.record_result(result("1.1", "2"), patient_id="PH0001", study_date="2025-01-10")
    store.record_result(result("1.2", "3"), patient_id="PH0001", study_date="2026-01-10")
    store.record_result(result("1.3", "4A"), patient_id="OTHER", study_date="2025-06-10")
    priors = store.priors("PH0001", before_date="2026-01-10")
    assert [(d, r.study_instance_uid) for d, r in priors] == [("2025-01-10", "1.1")]
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert "PH0001" not in dump


def test_corrections_are_recorded_and_mark_the_result_reviewed(tmp_path):
    store = ResultStore(tmp_path / "t.db")
    rid = store.record_result(result("1.1", "4A"), patient_id="PH0001", study_date="2026-01-01")
    n = store.record_corrections(rid, [{"finding_id": "F1", "action": "edited", "dice": 0.8, "volume_change_pct": -12.0, "observer": "Dr A"}])
    assert n == 1
    assert store.worklist() == []
    assert store.worklist(status="reviewed")[0]["result_id"] == rid
    rec = store.corrections(rid)[0]
    assert rec["action"] == "edited" and rec["dice"] == 0.8


def test_concurrent_writers_do_not_lose_results(tmp_path):
    store = ResultStore(tmp_path / "t.db")
    threads = [threading.Thread(target=lambda i=i: store.record_result(result(f"2.{i}", "2"), study_date="2026-01-01")) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.worklist()) == 16
