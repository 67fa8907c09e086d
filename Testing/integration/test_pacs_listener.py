"""The listener (Storage SCP + query/retrieve) with DCMTK's storescu/findscu/getscu as independent
clients, plus our own client: what a PACS routing studies to us, and the department, get."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from MedImgAILib.dicom.index import StudyIndex
from MedImgAILib.pacs import client
from MedImgAILib.pacs.errors import AssociationRejectedError
from MedImgAILib.pacs.listener import Listener, ListenerConfig
from MedImgAILib.pacs.settings import PacsSettings, TlsSettings
from MedImgAILib.pacs.storage import JOURNAL_NAME
from Testing.conftest import REPO, require_tool

pytestmark = pytest.mark.integration


def _sops(paths) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


class Completed:
    """Collects on_study_complete calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Path]]] = []
        self.event = threading.Event()

    def __call__(self, study_uid: str, paths: list[Path]) -> None:
        self.calls.append((study_uid, paths))
        self.event.set()


def _indexed_sops(index: StudyIndex, study_uid: str) -> set[str]:
    return {i.sop_instance_uid for se in index.series(study_uid) for i in index.instances(se.series_instance_uid)}


def _listener(tmp_path: Path, **kw) -> Listener:
    cfg = ListenerConfig(aet=kw.pop("aet", "LISTENER"), port=0, store_dir=tmp_path / "store",
                         quiet_seconds=kw.pop("quiet_seconds", 1.0), min_free_mb=kw.pop("min_free_mb", 1.0), **kw)
    return cfg


def storescu(port: int, files, *, aet: str = "STORESCU", called: str = "LISTENER") -> subprocess.CompletedProcess:
    exe = require_tool("storescu")
    return subprocess.run([exe, "-R", "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"})


def test_storescu_study_is_stored_indexed_and_reported_complete_once(study, tmp_path):
    done, index = Completed(), StudyIndex(tmp_path / "index.db")
    # quiet period 2 s: longer than any gap between two instances of one storescu run, even loaded
    with Listener(_listener(tmp_path, quiet_seconds=2.0), index=index, on_study_complete=done) as lst:
        r = storescu(lst.port, study["files"])
        assert r.returncode == 0, r.stderr
        assert done.event.wait(20)
        time.sleep(2.5)  # a second quiet period: no second report without new instances
    assert len(done.calls) == 1
    study_uid, paths = done.calls[0]
    assert study_uid == study["study_uid"] and len(paths) == 14
    assert _sops(paths) == _sops(study["files"]) == _indexed_sops(index, study["study_uid"])
    assert {p.path for se in index.series(study["study_uid"]) for p in index.instances(se.series_instance_uid)} == {
        str(p) for p in paths}
    st = index.studies()
    assert len(st) == 1 and st[0].number_of_instances == 14 and set(st[0].modalities) == {"CT", "SEG", "SR"}
    for p in paths:  # store layout: <store>/<study>/<series>/<sop>.dcm
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert p.relative_to(tmp_path / "store").parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID + ".dcm")
    src = pydicom.dcmread(study["files"][3])  # the real SEG, byte-for-byte pixel data
    assert pydicom.dcmread(next(p for p in paths if p.stem == src.SOPInstanceUID)).PixelData == src.PixelData


def test_duplicate_instances_are_idempotent(study, tmp_path):
    done = Completed()
    with Listener(_listener(tmp_path, quiet_seconds=4.0), on_study_complete=done) as lst:
        assert storescu(lst.port, study["files"][:4]).returncode == 0
        assert storescu(lst.port, study["files"][:4]).returncode == 0  # same instances again: success
        assert done.event.wait(20)
    assert len(list((tmp_path / "store").glob("*/*/*.dcm"))) == 4
    assert len(done.calls) == 1 and len(done.calls[0][1]) == 4


def test_calling_ae_not_allowed_is_rejected_naming_the_ae(study, tmp_path):
    with Listener(_listener(tmp_path, allow=["STORESCU", "MEDIMGAI"])) as lst:
        r = storescu(lst.port, study["files"][:1], aet="INTRUDER")
        assert r.returncode != 0 and "Rejected" in (r.stdout + r.stderr)
        s = PacsSettings(local_aet="INTRUDER")
        with pytest.raises(AssociationRejectedError, match="calling AE 'INTRUDER'.*[Cc]alling AE title not recognised"):
            client.echo(s.node(f"LISTENER@127.0.0.1:{lst.port}"), s)
        s_ok = PacsSettings(local_aet="MEDIMGAI")
        with pytest.raises(AssociationRejectedError, match="called AE 'WRONG'"):
            client.echo(s_ok.node(f"WRONG@127.0.0.1:{lst.port}"), s_ok)
        assert client.echo(s_ok.node(f"LISTENER@127.0.0.1:{lst.port}"), s_ok) > 0
    assert not list((tmp_path / "store").glob("*/*/*.dcm"))


def test_bounded_concurrent_associations(tmp_path):
    s = PacsSettings()
    with Listener(_listener(tmp_path, max_associations=1)) as lst:
        node = s.node(f"LISTENER@127.0.0.1:{lst.port}")
        from pynetdicom import build_context
        from pynetdicom.sop_class import Verification

        with client.associate(node, s, [build_context(Verification)]):
            with pytest.raises(AssociationRejectedError, match="(?i)local limit exceeded"):
                client.echo(node, s)
        # the slot is free again once the released association's thread has ended (pynetdicom
        # counts live association threads): within moments, not at the instant of the release
        deadline = time.monotonic() + 5
        while True:
            try:
                assert client.echo(node, s) > 0
                break
            except AssociationRejectedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _dataset_bytes(path: Path) -> bytes:
    from pydicom.filereader import read_preamble, _read_file_meta_info  # noqa: PLC2701

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


def test_store_sends_each_file_as_stored(study, tmp_path):
    with Listener(_listener(tmp_path)) as lst:
        s = PacsSettings()
        res = client.store(s.node(f"LISTENER@127.0.0.1:{lst.port}"), s, study["files"])
    assert (res.sent, res.failed) == (len(study["files"]), 0)
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in (tmp_path / "store").rglob("*.dcm")}
    for f in study["files"]:  # CT, SEG, SR, Enhanced SR: the dataset bytes arrive untouched
        src = pydicom.dcmread(f, stop_before_pixels=True)
        assert _dataset_bytes(stored[src.SOPInstanceUID]) == _dataset_bytes(f), f.name


def test_store_converts_for_a_peer_that_refuses_the_files_syntax(study):
    """A peer that takes only Implicit VR: the Explicit VR files are re-encoded for it, not refused."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    received = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((str(event.context.transfer_syntax), ds))
        return 0x0000

    ae = AE(ae_title="IMPLICITONLY")
    ae.add_supported_context(CTImageStorage, [ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = server.server_address[1]
        cts = [f for f in study["files"] if pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID == CTImageStorage
               and pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian]
        assert cts, "the study fixture should hold Explicit VR CT files"
        s = PacsSettings()
        res = client.store(s.node(f"IMPLICITONLY@127.0.0.1:{port}"), s, cts)
    finally:
        server.shutdown()
    assert (res.sent, res.failed) == (len(cts), 0)
    assert {ts for ts, _ in received} == {ImplicitVRLittleEndian}
    by_uid = {ds.SOPInstanceUID: ds for _, ds in received}
    for f in cts:
        src = pydicom.dcmread(f)
        assert (by_uid[src.SOPInstanceUID].pixel_array == src.pixel_array).all()


def test_store_decompresses_for_a_peer_that_takes_only_uncompressed(tmp_path):
    """An RLE and a JPEG-LS file to a peer that takes MR only in Implicit VR: decompressed and
    re-encoded (same pixels), not refused; a file in a syntax the peer takes goes byte for byte."""
    from pydicom.data import get_testdata_file
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage

    from MedImgAILib.pacs.dimse import dataset_offset

    received = {}

    def on_store(event):
        received[event.request.AffectedSOPInstanceUID] = (str(event.context.transfer_syntax), bytes(event.request.DataSet.getvalue()))
        return 0x0000

    ae = AE(ae_title="PLAINONLY")
    ae.add_supported_context(MRImageStorage, [ImplicitVRLittleEndian])
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    files = [Path(get_testdata_file(n)) for n in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm")]
    try:
        s = PacsSettings()
        res = client.store(s.node(f"PLAINONLY@127.0.0.1:{server.server_address[1]}"), s, files)
    finally:
        server.shutdown()
    assert (res.sent, res.failed) == (3, 0), res.errors
    for f in files:
        src = pydicom.dcmread(f)
        ts, raw = received[src.SOPInstanceUID]
        got = read_dataset(DicomBytesIO(raw), is_implicit_VR=ts == ImplicitVRLittleEndian, is_little_endian=True)
        got.file_meta = FileMetaDataset()
        got.file_meta.TransferSyntaxUID = ts
        assert (got.pixel_array == src.pixel_array).all(), f.name
        if f.name == "CT_small.dcm":  # its own syntax: the stored bytes after the File Meta, unchanged
            whole = f.read_bytes()
            assert ts == ExplicitVRLittleEndian and raw == whole[dataset_offset(whole[:65536]):]
        else:
            assert ts == ImplicitVRLittleEndian


def test_dataset_offset_of_part10_files():
    from pydicom.data import get_testdata_file

    from MedImgAILib.pacs.dimse import dataset_offset

    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm"):
        data = Path(get_testdata_file(name)).read_bytes()
        off = dataset_offset(data[:65536])
        with open(get_testdata_file(name), "rb") as fh:
            pydicom.filereader.read_preamble(fh, False)
            pydicom.filereader._read_file_meta_info(fh)
            assert off == fh.tell(), name
    assert dataset_offset(b"\0" * 64) is None  # no preamble / DICM: not laid out as Part 10


def test_disk_nearly_full_refuses_with_out_of_resources(study, tmp_path):
    with Listener(_listener(tmp_path, min_free_mb=10**12)) as lst:  # "nearly full": less than 1 EB free
        s = PacsSettings()
        res = client.store(s.node(f"LISTENER@127.0.0.1:{lst.port}"), s, study["files"][:3])
    assert res.sent == 0 and res.failed == 3 and all("0xA700" in e for e in res.errors)
    assert not list((tmp_path / "store").rglob("*.dcm"))


def test_store_folder_removed_under_a_running_listener_fails_each_instance_and_serves_on(study, tmp_path):
    """The store's folder removed while the listener runs: each C-STORE gets a failure status at once
    (it used to get no answer at all, and the sender waited for its DIMSE timeout). A folder made
    again by hand does not bring the removed journal back: instances stay refused (never acknowledged
    into a file that is gone) until the listener is restarted, which then stores them."""
    import shutil

    s = PacsSettings()
    with Listener(_listener(tmp_path)) as lst:
        node = s.node(f"LISTENER@127.0.0.1:{lst.port}")
        shutil.rmtree(tmp_path / "store")
        t0 = time.monotonic()
        res = client.store(node, s, study["files"][:2])
        assert time.monotonic() - t0 < 10
        assert res.sent == 0 and res.failed == 2 and all("0xA700" in e for e in res.errors), res.errors
        (tmp_path / "store").mkdir()
        res = client.store(node, s, study["files"][:1])
        assert res.sent == 0 and res.failed == 1, res.errors
    with Listener(_listener(tmp_path)) as lst:
        res = client.store(s.node(f"LISTENER@127.0.0.1:{lst.port}"), s, study["files"][:2])
        assert res.sent == 2, res.errors
    assert len(list((tmp_path / "store").rglob("*.dcm"))) == 2


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("field,value", [
    ("StudyInstanceUID", "../../../escaped"),
    ("SeriesInstanceUID", "1.2/../../../escaped"),
    ("SOPInstanceUID", ".."),
    ("StudyInstanceUID", "/tmp/escaped"),
])
def test_malicious_uid_cannot_write_outside_the_store(study, tmp_path, field, value):
    ds = pydicom.dcmread(study["files"][4])
    setattr(ds, field, value)
    if field == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    before = set(tmp_path.parent.rglob("*escaped*"))
    with Listener(_listener(tmp_path)) as lst:
        s = PacsSettings()
        node = s.node(f"LISTENER@127.0.0.1:{lst.port}")
        res = client.store(node, s, [bad])
        assert res.sent == 0 and res.failed == 1, res.errors
        assert lst.received == 0 and lst.refused == 1
        assert client.echo(node, s) > 0  # still serving
    assert set(tmp_path.parent.rglob("*escaped*")) == before
    assert not Path("/tmp/escaped").exists()
    # nothing but the (empty) write-ahead journal
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != JOURNAL_NAME] == []


def test_query_retrieve_with_dcmtk_findscu_getscu_and_our_client(study, tmp_path):
    """The listener as embedded PACS: DCMTK and our client query and retrieve what it holds."""
    with Listener(_listener(tmp_path)) as lst:
        assert storescu(lst.port, study["files"]).returncode == 0
        r = subprocess.run([require_tool("findscu"), "-S", "-aet", "FINDSCU", "-aec", "LISTENER",
                            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "ModalitiesInStudy",
                            "-k", "NumberOfStudyRelatedInstances", "-k", "NumberOfStudyRelatedSeries",
                            "127.0.0.1", str(lst.port)], capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and out.count("Find Response:") == 1  # one row per study, not per instance
        assert "CT\\SEG\\SR" in out and "[14]" in out and "[5 ]" in out
        gdir = tmp_path / "getscu"
        gdir.mkdir()
        r = subprocess.run([require_tool("getscu"), "-S", "-aet", "GETSCU", "-aec", "LISTENER",
                            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study['study_uid']}",
                            "-k", f"SeriesInstanceUID={study['series']['CT:synthetic thin CT']}",
                            "-od", str(gdir), "127.0.0.1", str(lst.port)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(list(gdir.iterdir())) == 8
        s = PacsSettings()
        node = s.node(f"LISTENER@127.0.0.1:{lst.port}")
        st = client.find(node, s, "study", patient_name="JAN*")
        assert len(st) == 1 and st[0]["modalities"] == ["CT", "SEG", "SR"] and st[0]["n_instances"] == 14
        assert len(client.find(node, s, "series", study_uid=study["study_uid"])) == 5
        assert [p["patient_id"] for p in client.find(node, s, "patient", patient_id="99000")] == ["99000"]
        assert client.find(node, s, "study", study_date="20100101-") == []
        res = client.retrieve(node, s, study["study_uid"], tmp_path / "ours")
        assert res.complete and res.received == 14
        assert _sops(res.paths) == _sops(study["files"])


def test_c_move_from_listener_to_another_listener(study, tmp_path):
    dest = Listener(ListenerConfig(aet="DEST", port=0, store_dir=tmp_path / "dest", min_free_mb=1)).start()
    try:
        with Listener(_listener(tmp_path, move_destinations={"DEST": ("127.0.0.1", dest.port)})) as src:
            assert storescu(src.port, study["files"]).returncode == 0
            s = PacsSettings()
            node = s.node(f"LISTENER@127.0.0.1:{src.port}")
            res = client.retrieve(node, s, study["study_uid"], tmp_path / "unused", method="move", move_destination="DEST")
            assert res.complete and res.received == 14
            bad = client.retrieve(node, s, study["study_uid"], tmp_path / "unused", method="move", move_destination="NOBODY")
            assert not bad.complete and any("0xA801" in e for e in bad.errors)
    finally:
        dest.stop()
    assert _sops((tmp_path / "dest").glob("*/*/*.dcm")) == _sops(study["files"])


def test_tls_listener(study, tmp_path):
    openssl = require_tool("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls = TlsSettings(cert=cert, key=key)
    with Listener(_listener(tmp_path, tls=tls)) as lst:
        s = PacsSettings.model_validate({"nodes": {"secure": {"aet": "LISTENER", "host": "127.0.0.1", "port": lst.port,
                                                              "tls": {"ca": str(cert)}}}})
        res = client.store(s.node("secure"), s, study["files"][:3])
        assert res.sent == 3
        from MedImgAILib.pacs.errors import PacsConnectionError

        plain = PacsSettings(timeouts={"acse": 3})
        with pytest.raises((PacsConnectionError, AssociationRejectedError)):
            client.echo(plain.node(f"LISTENER@127.0.0.1:{lst.port}"), plain)
    assert len(list((tmp_path / "store").glob("*/*/*.dcm"))) == 3


# --- the listener process: kill -9 and SIGTERM ----------------------------------------------------
def _start_listener_process(store: Path, quiet: float = 2.0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "MedImgAILib", "listen", "--aet", "LISTENER", "--port", "0", "--store", str(store),
         "--quiet-seconds", str(quiet), "--min-free-mb", "1", "--index", str(store.parent / "index.db")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    ev = json.loads(line)
    assert ev["event"] == "listening"
    return proc, ev["port"]


def _send_and_interrupt(port: int, files: list[Path], after: int, interrupt) -> list[Path]:
    """storescu the files; call ``interrupt()`` after ``after`` success responses. Returns the files
    whose C-STORE was acknowledged with success (the listener's promise covers exactly those)."""
    p = subprocess.Popen([require_tool("storescu"), "-v", "-aet", "STORESCU", "-aec", "LISTENER",
                          "127.0.0.1", str(port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={**os.environ, "TCP_NODELAY": "1"})
    acked, current, fired = [], None, False
    for line in p.stdout:
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response" in line and "Success" in line and current is not None:
            acked.append(current)
            if len(acked) >= after and not fired:
                interrupt()
                fired = True
    p.wait(timeout=60)
    return acked


def test_listener_killed_mid_study_keeps_every_acknowledged_instance(study, tmp_path):
    from .study_data import ct_series

    files = ct_series(tmp_path / "src", 80, size=128, patient_id="KILL01")
    store = tmp_path / "store"
    proc, port = _start_listener_process(store)
    acked = _send_and_interrupt(port, files, 10, lambda: proc.send_signal(signal.SIGKILL))
    proc.wait(timeout=10)
    assert 10 <= len(acked) < len(files), "the kill must land mid-study"
    # every acknowledged instance is on disk, whole: as its file, or as a record of the write-ahead
    # journal (flushed before the success status; the file is placed after it, so a kill can land
    # in between) whose bytes are the instance
    from MedImgAILib.pacs.storage import JOURNAL_NAME, Journal

    on_disk = {p.stem: p.read_bytes() for p in store.glob("*/*/*.dcm")}
    if (store / JOURNAL_NAME).exists():
        journal = Journal(store, capacity=0)  # as it is: no preallocation
        on_disk.update({rel.rsplit("/", 1)[-1][:-4]: data for rel, data in journal.records()})
        os.close(journal.fd)
    import io

    for f in acked:
        sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert sop in on_disk
        assert pydicom.dcmread(io.BytesIO(on_disk[sop])).PixelData == pydicom.dcmread(f).PixelData
    # restart: the journal is replayed (files placed), the store re-scanned (half-written temporaries
    # dropped), everything acknowledged is a file, indexed and queryable, and the never-reported study
    # is reported complete
    proc, port = _start_listener_process(store, quiet=1.0)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    acked_sops = _sops(acked)
    placed = {p.stem: p for p in store.glob("*/*/*.dcm")}
    for f in acked:
        sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert pydicom.dcmread(placed[sop]).PixelData == pydicom.dcmread(f).PixelData
    assert acked_sops <= _indexed_sops(StudyIndex(tmp_path / "index.db"), study_uid)
    try:
        s = PacsSettings()
        images = client.find(s.node(f"LISTENER@127.0.0.1:{port}"), s, "image", patient_id="KILL01")
        assert acked_sops <= {r["sop_uid"] for r in images}
        line = proc.stdout.readline()
        ev = json.loads(line)
        assert ev["event"] == "study-complete" and ev["instances"] >= len(acked)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not list(store.glob("*/*/.incoming-*"))


def test_sigterm_stops_cleanly_without_losing_instances(tmp_path):
    from .study_data import ct_series

    files = ct_series(tmp_path / "src", 40, size=128, patient_id="TERM01")
    store = tmp_path / "store"
    proc, port = _start_listener_process(store, quiet=30)
    acked = _send_and_interrupt(port, files, 5, lambda: proc.send_signal(signal.SIGTERM))
    rc = proc.wait(timeout=40)
    out = proc.stdout.read()
    assert rc == 0, proc.stderr.read()
    assert '"event": "stopped"' in out
    assert len(acked) >= 5
    assert _sops(acked) <= {p.stem for p in store.glob("*/*/*.dcm")}
    assert not list(store.glob("*/*/.incoming-*"))


def test_embedded_pacs_serve_cli_then_find_and_get_cli(study, tmp_path):
    """`medimgai pacs serve` is the demo's PACS: nothing beyond pip dependencies."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "MedImgAILib", "pacs", "serve", "--aet", "DEMOPACS", "--port", "0",
         "--store", str(tmp_path / "pacs"), "--min-free-mb", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = json.loads(proc.stdout.readline())["port"]
        node = f"DEMOPACS@127.0.0.1:{port}"
        cli = [sys.executable, "-m", "MedImgAILib", "pacs"]
        r = subprocess.run([*cli, "store", node, *map(str, study["files"]), "--json"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0 and json.loads(r.stdout)["sent"] == 14, r.stderr
        r = subprocess.run([*cli, "find", node, "--level", "study", "--json"], cwd=REPO, capture_output=True, text=True)
        assert json.loads(r.stdout)["records"][0]["n_instances"] == 14
        r = subprocess.run([*cli, "get", node, study["study_uid"], "--out", str(tmp_path / "got"), "--json"], cwd=REPO,
                           capture_output=True, text=True)
        out = json.loads(r.stdout)
        assert r.returncode == 0 and (out["received"], out["failed"], out["complete"]) == (14, 0, True)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_one_association_mixing_store_echo_find(tmp_path):
    """C-STOREs are served on the association's thread until another request arrives; pynetdicom
    then serves the rest of the association (echo, find, more stores) and its release."""
    from pynetdicom import AE, build_context
    from pynetdicom import sop_class as sc

    from .study_data import ct_series

    files = ct_series(tmp_path / "src", 8, size=64, patient_id="MIXED01")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with Listener(_listener(tmp_path)) as lst:
        ae = AE(ae_title="MIXER")
        ae.requested_contexts = [build_context(sc.CTImageStorage), build_context(sc.Verification),
                                 build_context(sc.StudyRootQueryRetrieveInformationModelFind)]
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="LISTENER")
        assert assoc.is_established
        try:
            for f in files[:5]:
                assert assoc.send_c_store(f).Status == 0x0000
            assert assoc.send_c_echo().Status == 0x0000
            q = pydicom.Dataset()
            q.QueryRetrieveLevel, q.StudyInstanceUID, q.NumberOfStudyRelatedInstances = "STUDY", study_uid, ""
            answers = [i for st, i in assoc.send_c_find(q, sc.StudyRootQueryRetrieveInformationModelFind)
                       if st.Status == 0xFF00]
            assert [int(a.NumberOfStudyRelatedInstances) for a in answers] == [5]
            for f in files[5:]:
                assert assoc.send_c_store(f).Status == 0x0000
        finally:
            assoc.release()
        assert assoc.is_released
        assert lst.received == 8 and lst.received_sync >= 1  # the first stores took the synchronous path
    assert _sops(files) == {p.stem for p in (tmp_path / "store").glob("*/*/*.dcm")}


def test_sender_dying_mid_instance_leaves_nothing_and_listener_serves_on(study, tmp_path):
    """A C-STORE whose dataset is cut off (the sender's connection drops mid-transfer): nothing is
    stored or acknowledged, and the listener goes on serving."""
    import struct

    from pynetdicom import AE, build_context
    from pynetdicom import sop_class as sc

    from MedImgAILib.pacs.syncget import encode_command

    def pdu(context_id: int, control: int, data: bytes) -> bytes:
        item = bytes((context_id, control)) + data
        return struct.pack(">BBII", 0x04, 0, len(item) + 4, len(item)) + item

    with Listener(_listener(tmp_path)) as lst:
        ae = AE(ae_title="DYING")
        ae.requested_contexts = [build_context(sc.CTImageStorage)]
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="LISTENER")
        assert assoc.is_established
        cx = assoc.accepted_contexts[0].context_id
        uid = "1.2.3.4.5.6"
        cmd = encode_command([
            (0x0002, sc.CTImageStorage.encode() + (b"\0" if len(sc.CTImageStorage) % 2 else b"")),
            (0x0100, struct.pack("<H", 0x0001)), (0x0110, struct.pack("<H", 1)), (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)), (0x1000, uid.encode())])
        sock = assoc.dul.socket.socket
        sock.sendall(pdu(cx, 0x03, cmd) + pdu(cx, 0x00, b"\x08\x00\x16\x00" + b"x" * 1000))  # not the last fragment
        time.sleep(0.3)
        sock.close()  # the sender dies
        assoc.abort()
        deadline = time.monotonic() + 10
        while lst._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lst.received == 0
        s = PacsSettings()
        assert client.echo(s.node(f"LISTENER@127.0.0.1:{lst.port}"), s) > 0
        assert storescu(lst.port, study["files"][:2]).returncode == 0
        assert lst.received == 2
    assert not list((tmp_path / "store").glob("*/*/.incoming-*"))
    assert len(list((tmp_path / "store").glob("*/*/*.dcm"))) == 2


def test_command_pdu_arriving_in_parts_and_a_sender_dying_inside_one(study, tmp_path):
    """The listener peeks at each C-STORE's command PDU before it takes the message. Written in two
    parts with a pause (senders often write a PDU's header and body separately), it waits for the
    rest and stores the instance; a sender that dies inside one ends its association at once (not
    after the network timeout), and the listener serves on."""
    import struct

    from pynetdicom import AE, build_context
    from pynetdicom import sop_class as sc
    from pydicom.uid import ExplicitVRLittleEndian

    from MedImgAILib.pacs.dimse import dataset_offset
    from MedImgAILib.pacs.syncget import encode_command

    def pdu(context_id: int, control: int, data: bytes) -> bytes:
        item = bytes((context_id, control)) + data
        return struct.pack(">BBII", 0x04, 0, len(item) + 4, len(item)) + item

    def plain_ct(f: Path) -> bool:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        return ds.SOPClassUID == sc.CTImageStorage and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

    src = next(f for f in study["files"] if plain_ct(f))
    raw = src.read_bytes()
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)

    def command(sop: str) -> bytes:
        ui = lambda u: u.encode() + (b"\0" if len(u) % 2 else b"")  # noqa: E731
        return encode_command([(0x0002, ui(sc.CTImageStorage)), (0x0100, struct.pack("<H", 0x0001)),
                               (0x0110, struct.pack("<H", 1)), (0x0700, struct.pack("<H", 0)),
                               (0x0800, struct.pack("<H", 0x0000)), (0x1000, ui(sop))])

    cfg = _listener(tmp_path)
    cfg.timeouts = (30.0, 60.0, 60.0)
    with Listener(cfg) as lst:
        ae = AE(ae_title="SPLIT")
        ae.requested_contexts = [build_context(sc.CTImageStorage, [ExplicitVRLittleEndian])]
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="LISTENER")
        assert assoc.is_established
        cx = assoc.accepted_contexts[0].context_id
        sock = assoc.dul.socket.socket
        first = pdu(cx, 0x03, command(uid))
        sock.sendall(first[:6])  # the PDU header alone
        time.sleep(0.05)
        sock.sendall(first[6:] + pdu(cx, 0x02, raw[dataset_offset(raw):]))
        deadline = time.monotonic() + 10
        while lst.received < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lst.received == 1 and lst.received_sync == 0  # counted when the association ends
        assoc.abort()

        assoc = ae.associate("127.0.0.1", lst.port, ae_title="LISTENER")
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        sock.sendall(pdu(cx, 0x03, command("1.2.3.4.5.6"))[:20])
        time.sleep(0.1)
        t0 = time.monotonic()
        sock.close()  # the sender dies inside the command PDU
        assoc.abort()
        while lst._ae.active_associations and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        assert not lst._ae.active_associations and time.monotonic() - t0 < 5
        assert storescu(lst.port, study["files"][:2]).returncode == 0
        assert lst.received == 3
    assert uid in {p.stem for p in (tmp_path / "store").glob("*/*/*.dcm")}
