"""The local study index: what the listener and later stages see after instances were added."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest

from MedImgAILib.dicom.index import StudyIndex
from MedImgAILib.dicom.metadata import SeriesMetadata
from MedImgAILib.errors import NoSeriesFoundError
from Testing.dicom_synth import write_series


@pytest.fixture()
def index(tmp_path: Path) -> StudyIndex:
    idx = StudyIndex(tmp_path / "db" / "index.sqlite")
    yield idx
    idx.close()


def test_add_instance_is_idempotent_and_keeps_metadata(index: StudyIndex, ct3slice_dir: Path) -> None:
    f = ct3slice_dir / "01.dcm"
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    assert index.add_instance(f, ds) is True
    assert index.add_instance(f, ds) is False  # same SOP Instance UID: nothing new
    assert index.add_instance(ct3slice_dir / "02.dcm", pydicom.dcmread(ct3slice_dir / "02.dcm")) is True
    (study,) = index.studies()
    assert study.study_instance_uid == ds.StudyInstanceUID
    assert study.modalities == ("CT",) and study.number_of_instances == 2 and study.number_of_series == 1
    (series,) = index.series(study.study_instance_uid)
    assert series.series_instance_uid == ds.SeriesInstanceUID and series.number_of_instances == 2
    meta = index.series_metadata(ds.SeriesInstanceUID)
    assert isinstance(meta, SeriesMetadata)
    assert meta.acquisition.slice_thickness_mm.value == 1.25
    assert meta.series.number_of_instances.value == 2
    assert meta.series.modality.source.startswith("(0008,0060)")
    insts = index.instances(ds.SeriesInstanceUID)
    assert {Path(i.path).name for i in insts} == {"01.dcm", "02.dcm"}
    with pytest.raises(NoSeriesFoundError):
        index.series_metadata("1.2.3.4")


def test_add_folder_and_queries(index: StudyIndex, pydicom_testdata: Path, ct3slice_dir: Path) -> None:
    added, skipped = index.add_folder(pydicom_testdata / "dicomdirtests")
    assert added > 40
    assert any(Path(p).name == "DICOMDIR" for p, _ in skipped)
    again, _ = index.add_folder(pydicom_testdata / "dicomdirtests")
    assert again == 0
    index.add_folder(ct3slice_dir)
    studies = index.studies()
    assert len(studies) >= 3
    ct_studies = index.studies(modality="CT")
    assert ct_studies and all("CT" in s.modalities for s in ct_studies)
    mr = index.series(modality="MR")
    assert mr and all(s.modality == "MR" for s in mr)
    seg = index.series(modality="SEG")
    assert len(seg) == 1  # liver_seg.dcm
    one = studies[0]
    assert index.studies(study_instance_uid=one.study_instance_uid)[0] == one
    assert index.studies(patient_id=one.patient_id + "-nobody") == []
    assert index.series(series_description="Routine*")  # wildcard
    with pytest.raises(ValueError, match="unknown study filter"):
        index.studies(colour="red")


def test_concurrent_adds_from_several_threads(tmp_path: Path) -> None:
    s = write_series(tmp_path / "s", size=(4, 4, 40))
    other = write_series(tmp_path / "o", size=(4, 4, 20), study_uid=s.study_uid)
    files = s.files + other.files
    dss = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    idx = StudyIndex(f"sqlite:///{tmp_path / 'concurrent.sqlite'}")
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        # each thread adds every file (in its own order): all but one add of each must be a no-op
        order = files[n:] + files[:n]
        for f in order:
            try:
                r = idx.add_instance(f, dss[f])
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                with lock:
                    errors.append(exc)
                return
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(results) == len(files) and len(results) == 6 * len(files)
    (study,) = idx.studies()
    assert study.number_of_series == 2 and study.number_of_instances == 60
    # a second index object on the same file (another process would look the same) sees everything
    idx2 = StudyIndex(tmp_path / "concurrent.sqlite")
    assert [x.number_of_instances for x in idx2.series()] == [40, 20] or sorted(
        x.number_of_instances for x in idx2.series()
    ) == [20, 40]
    idx.close()
    idx2.close()


def test_instance_without_uids_is_refused(index: StudyIndex) -> None:
    from pydicom.dataset import Dataset

    from MedImgAILib.errors import DicomInputError

    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    with pytest.raises(DicomInputError, match="no SeriesInstanceUID"):
        index.add_instance("x.dcm", ds)
