"""PACS client against real Orthanc and DCMTK dcmqrscp: what a user of `medimgai pacs` gets."""

from __future__ import annotations

import json
import threading

import pydicom
import pytest

from MedImgAILib.pacs import client
from MedImgAILib.pacs.errors import AssociationRejectedError, PacsConnectionError
from MedImgAILib.pacs.settings import PacsSettings

from .conftest import MOVE_PORT, OUR_AET, run_cli

pytestmark = pytest.mark.integration


def _sops(paths) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_echo_cli(orthanc, in_ns):
    r = run_cli("pacs", "echo", orthanc.node, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_find_study_series_image_levels_normalized(orthanc, study, in_ns):
    s = PacsSettings()
    node = s.node(orthanc.node)
    studies = client.find(node, s, "study", patient_id="99000")
    assert len(studies) == 1
    st = studies[0]
    assert st["study_uid"] == study["study_uid"]
    assert st["modalities"] == ["CT", "SEG", "SR"]
    assert st["n_instances"] == 14 and st["n_series"] == 5
    series = client.find(node, s, "series", study_uid=study["study_uid"])
    assert {r["series_uid"] for r in series} == set(study["series"].values())
    assert {r["modality"] for r in series} == {"CT", "SEG", "SR"}
    seg = [r for r in series if r["modality"] == "SEG"]
    assert seg[0]["series_description"] == "Liver Segmentation"
    patients = client.find(node, s, "patient", patient_id="99000")
    assert [(p["patient_id"], p.get("n_studies")) for p in patients] == [("99000", 1)]
    images = client.find(node, s, "image", study_uid=study["study_uid"])
    assert len(images) == 14 and _sops(study["files"]) == {r["sop_uid"] for r in images}
    # filters: a date range, a wildcard description, modality, and a miss
    assert client.find(node, s, "study", study_date="20030101-20031231")[0]["study_uid"] == study["study_uid"]
    assert client.find(node, s, "study", study_date="20040101-") == []
    assert len(client.find(node, s, "series", study_uid=study["study_uid"], description="*SR*")) == 2
    assert len(client.find(node, s, "series", study_uid=study["study_uid"], modality="SEG")) == 1


def test_find_cli_json(orthanc, study, in_ns):
    r = run_cli("pacs", "find", orthanc.node, "--level", "series", "--study-uid", study["study_uid"], "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["count"] == 5 and out["level"] == "series"


def test_get_cli_whole_study_with_seg_and_sr(orthanc, study, in_ns, tmp_path):
    r = run_cli("pacs", "get", orthanc.node, study["study_uid"], "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["received"], out["failed"], out["complete"]) == (14, 0, True)
    assert out["seconds"] > 0
    files = sorted(tmp_path.glob("*/*/*.dcm"))
    assert _sops(files) == _sops(study["files"])
    classes = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID.name for f in files}
    assert {"Segmentation Storage", "Comprehensive 3D SR Storage", "Enhanced SR Storage", "CT Image Storage"} <= classes
    # pixel data arrives intact (the real GE slice)
    src = pydicom.dcmread(study["files"][0])
    got = pydicom.dcmread(next(f for f in files if f.stem == str(src.SOPInstanceUID)))
    assert got.PixelData == src.PixelData


def test_get_through_pynetdicoms_own_path_too(orthanc, study, in_ns, tmp_path, monkeypatch):
    """The C-GET path used with TLS (pynetdicom's reactors) gives the same result as the synchronous one."""
    monkeypatch.setattr(client, "SYNC_GET", False)
    s = PacsSettings()
    res = client.retrieve(s.node(orthanc.node), s, study["study_uid"], tmp_path)
    assert res.complete and res.received == res.expected == 14
    assert _sops(res.paths) == _sops(study["files"])


def test_get_one_series_in_parallel_associations(orthanc, study, in_ns, tmp_path):
    s = PacsSettings()
    node = s.node(orthanc.node)
    series = study["series"]["CT:synthetic thin CT"]
    seen = []
    res = client.retrieve(node, s, study["study_uid"], tmp_path, series_uids=[series], parallel=4,
                          on_progress=lambda done, total: seen.append((done, total)))
    assert res.complete and res.received == 8 and res.expected == 8
    assert seen[-1] == (8, 8)
    assert {p.parent.name for p in res.paths} == {series}


def test_parallel_associations_split_a_study(fault_orthanc, study, in_ns, tmp_path):
    s = PacsSettings()
    node = s.node(fault_orthanc.node)
    res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=3)
    assert res.associations == 3
    assert res.complete and res.received == fault_orthanc.expected


def test_parallel_retrieve_gets_every_instance_exactly_once(fault_orthanc, study, in_ns, tmp_path):
    s = PacsSettings()
    node = s.node(fault_orthanc.node)
    seen: list[int] = []
    res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=2,
                          on_progress=lambda done, total: seen.append(done))
    assert res.associations == 2 and res.complete
    files = sorted(tmp_path.glob("*/*/*.dcm"))
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert len(sops) == len(set(sops)) == res.received == res.expected == fault_orthanc.expected
    assert {f.stem for f in files} == set(sops)  # each file named by its own SOP Instance UID
    assert seen == list(range(1, fault_orthanc.expected + 1))  # progress counts each instance once
    assert not list(tmp_path.glob("*/*/.incoming-*"))


def test_parallel_retrieve_peer_killed_is_partial_then_retry_completes(fault_orthanc, study, in_ns, tmp_path):
    s = PacsSettings()
    node = s.node(fault_orthanc.node)

    def kill_after_ten(done: int, total: int) -> None:
        if done == 10:
            fault_orthanc.stop(sig=9)

    res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=2, on_progress=kill_after_ten)
    assert res.associations == 2 and not res.complete
    assert 10 <= res.received < res.expected == fault_orthanc.expected
    assert res.errors and all("aborted" in e for e in res.errors)
    fault_orthanc.start()
    res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=2)
    assert res.complete and res.received == res.expected == fault_orthanc.expected
    assert len(list(tmp_path.glob("*/*/*.dcm"))) == fault_orthanc.expected


def test_get_cli_starts_without_pynetdicom_pydicom_or_pydantic(orthanc, study, in_ns, tmp_path):
    """`pacs get` runs on the lean requestor: its start-up must not pay for pynetdicom, pydicom
    (numpy) or pydantic (~0.5 s of CPU here), nor for the standard library's dataclasses/inspect,
    typing, tempfile, logging or shutil (~25 ms more), and it still retrieves the whole study."""
    code = ("import json, sys; from MedImgAILib.cli import main; rc = main(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'loaded': sorted(m for m in ('pynetdicom', 'pydicom', 'pydantic', 'numpy', "
            "'dataclasses', 'inspect', 'typing', 'tempfile', 'logging', 'shutil') if m in sys.modules)}), "
            "file=sys.stderr)")
    import subprocess
    import sys

    from Testing.conftest import REPO

    r = subprocess.run([sys.executable, "-c", code, "pacs", "get", orthanc.node, study["study_uid"], "--out",
                        str(tmp_path), "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    status = json.loads(r.stderr.strip().splitlines()[-1])
    assert status == {"rc": 0, "loaded": []}, r.stderr
    out = json.loads(r.stdout)
    assert out["complete"] and out["received"] == 14
    assert _sops(tmp_path.glob("*/*/*.dcm")) == _sops(study["files"])


def test_move_cli_into_temporary_listener(orthanc, study, in_ns, tmp_path):
    r = run_cli("pacs", "move", orthanc.node, study["study_uid"], "--out", str(tmp_path), "--port", str(MOVE_PORT),
                "--aet", OUR_AET, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["received"], out["failed"], out["complete"], out["method"]) == (14, 0, True, "move")
    assert _sops(tmp_path.glob("*/*/*.dcm")) == _sops(study["files"])


def test_store_cli_new_objects_reach_orthanc(orthanc, in_ns, tmp_path):
    from .study_data import ct_series

    files = ct_series(tmp_path / "new", 5, size=64, patient_id="STORE01")
    r = run_cli("pacs", "store", orthanc.node, str(tmp_path / "new"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sent"] == 5
    found = orthanc.rest("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"PatientID": "STORE01"}}).encode())
    assert len(found) == len(files)


def test_dcmqrscp_find_and_get(dcmqrscp, study, in_ns, tmp_path):
    s = PacsSettings()
    node = s.node(dcmqrscp.node)
    studies = client.find(node, s, "study", study_uid=study["study_uid"])
    assert len(studies) == 1 and studies[0]["study_uid"] == study["study_uid"]
    res = client.retrieve(node, s, study["study_uid"], tmp_path)
    assert res.complete and res.received == 14


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_get_refuses_a_crafted_uid_from_the_pacs_and_says_why(dcmqrscp, study, in_ns, tmp_path):
    """A PACS that serves a dataset whose Series Instance UID is a path: `pacs get` stores the rest of
    the study, refuses that instance (nothing written outside the store), reports the retrieval as
    incomplete and names the reason in its output."""
    study_uid = "1.2.826.0.1.3680043.10.1234.77"
    crafted = []
    for i, series in enumerate(["1.2.826.0.1.3680043.10.1234.77.1", "1.2/../../../escaped"]):
        ds = pydicom.dcmread(study["files"][4])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study_uid}.{i + 1}.1"
        crafted.append(tmp_path / f"crafted{i}.dcm")
        ds.save_as(crafted[-1])
    dcmqrscp.load(crafted)
    out = tmp_path / "deep" / "store"
    before = set(tmp_path.rglob("*escaped*"))
    r = run_cli("pacs", "get", dcmqrscp.node, study_uid, "--out", str(out), "--json")
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert (res["received"], res["failed"], res["complete"]) == (1, 1, False), res
    assert any("1 instance(s)" in e and "SeriesInstanceUID" in e and "not a valid DICOM UID" in e
               for e in res["errors"]), res["errors"]
    assert [p.name for p in out.rglob("*.dcm")] == [f"{study_uid}.1.1.dcm"]
    assert set(tmp_path.rglob("*escaped*")) == before


# --- faults ------------------------------------------------------------------------------------------
def test_pacs_down_is_one_clear_line(in_ns):
    r = run_cli("pacs", "echo", "ORTHANC@127.0.0.1:4999")
    assert r.returncode == 2
    assert r.stderr.strip() == "medimgai: cannot connect to ORTHANC@127.0.0.1:4999: connection refused"
    r = run_cli("pacs", "get", "ORTHANC@127.0.0.1:4999", "1.2.3", "--out", "/nonexistent-never-created")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "connection refused" in r.stderr


def test_wrong_called_ae_is_rejected_naming_the_ae(orthanc, in_ns):
    r = run_cli("pacs", "echo", "NOTORTHANC@127.0.0.1:4242")
    assert r.returncode == 2
    assert "NOTORTHANC" in r.stderr and "rejected" in r.stderr and r.stderr.count("\n") == 1
    s = PacsSettings()
    with pytest.raises(AssociationRejectedError, match="called AE 'NOTORTHANC'"):
        client.echo(s.node("NOTORTHANC@127.0.0.1:4242"), s)


def test_peer_abort_mid_retrieve_is_partial_then_retry_completes(fault_orthanc, study, in_ns, tmp_path):
    s = PacsSettings()
    node = s.node(fault_orthanc.node)

    def kill_after_ten(done: int, total: int) -> None:
        if done == 10:
            fault_orthanc.stop(sig=9)

    res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=1, on_progress=kill_after_ten)
    assert not res.complete
    assert 10 <= res.received < res.expected == fault_orthanc.expected
    assert res.errors and "aborted" in res.errors[0]
    r = run_cli("pacs", "get", node.__str__(), study["study_uid"], "--out", str(tmp_path), "--json")
    assert r.returncode == 2  # Orthanc is down now: an error, not a success
    fault_orthanc.start()  # same storage directory: the study is still there
    res = client.retrieve(node, s, study["study_uid"], tmp_path)
    assert res.complete and res.received == res.expected == fault_orthanc.expected
    assert len(list(tmp_path.glob("*/*/*.dcm"))) == fault_orthanc.expected
    assert not list(tmp_path.glob("*/*/.incoming-*"))


def test_dimse_timeout_when_peer_stalls(fault_orthanc, study, in_ns, tmp_path):
    s = PacsSettings.model_validate({"timeouts": {"dimse": 1.5}})
    node = s.node(fault_orthanc.node)

    def stall(done: int, total: int) -> None:
        if done == 5:
            fault_orthanc.pause()

    try:
        res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=1, on_progress=stall)
    finally:
        fault_orthanc.resume()
    assert not res.complete and res.received < res.expected
    assert any("no DIMSE response within 1.5 s" in e for e in res.errors)


@pytest.mark.parametrize("peer", ["fault_orthanc", "dcmqrscp"])
def test_c_cancel_stops_retrieval(peer, request, study, in_ns, tmp_path):
    server = request.getfixturevalue(peer)
    s = PacsSettings()
    node = s.node(server.node)
    cancel = threading.Event()

    def cancel_after_three(done: int, total: int) -> None:
        if done == 3:
            cancel.set()

    res = client.retrieve(node, s, study["study_uid"], tmp_path, parallel=1, on_progress=cancel_after_three,
                          cancel=cancel)
    assert res.cancelled and not res.complete
    assert 3 <= res.received < res.expected


def test_connection_refused_error_type():
    s = PacsSettings()
    with pytest.raises(PacsConnectionError, match="connection refused"):
        client.find(s.node("X@127.0.0.1:1"), s, "study")
