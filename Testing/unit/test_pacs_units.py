"""PACS building blocks without a network: settings, UID safety, durable store, C-FIND matching,
record normalization."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from MedImgAILib.pacs.client import build_query, normalize
from MedImgAILib.pacs.errors import PacsOperationError, PacsSettingsError, UnsafeUidError
from MedImgAILib.pacs.qr import find_answers, select_instances
from MedImgAILib.pacs.settings import load_settings
from MedImgAILib.pacs.storage import TMP_PREFIX, InstanceStore, header_of, is_valid_uid
from Testing.conftest import REPO

EXAMPLE = REPO / "Resources" / "pacs" / "settings.example.toml"


def test_example_settings_file_loads():
    s = load_settings(EXAMPLE)
    assert s.local_aet == "MEDIMGAI"
    assert str(s.node("orthanc")) == "ORTHANC@127.0.0.1:4242"
    assert s.node("hospital").tls is not None and s.node("hospital").tls.ca.name == "hospital-ca.pem"
    assert s.listener.quiet_seconds == 30 and s.timeouts.dimse == 60


def test_yaml_settings_and_inline_nodes(tmp_path):
    p = tmp_path / "pacs.yaml"
    p.write_text("local_aet: SITE_AI\ntimeouts: {dimse: 5}\nnodes:\n  main: {aet: PACS1, host: 10.0.0.5, port: 104}\n")
    s = load_settings(p)
    assert s.local_aet == "SITE_AI" and s.timeouts.dimse == 5
    assert s.node("main").port == 104 and s.node("main").name == "main"
    n = s.node("OTHER_AE@[::1]:11112")
    assert (n.aet, n.host, n.port) == ("OTHER_AE", "::1", 11112)


@pytest.mark.parametrize("text,match", [
    ("nodes = 3", "nodes"),
    ("[nodes.x]\naet = 'A'\nhost = 'h'\nport = 70000", "nodes.x.port"),
    ("[nodes.x]\naet = 'WAY_TOO_LONG_AE_TITLE'\nhost = 'h'\nport = 1", "not a valid AE title"),
    ("[timeouts]\ndimse = 'soon'", "timeouts.dimse"),
    ("colour = 'blue'", "colour"),
])
def test_bad_settings_name_the_key(tmp_path, text, match):
    p = tmp_path / "pacs.toml"
    p.write_text(text)
    with pytest.raises(PacsSettingsError, match=match):
        load_settings(p)


def test_unknown_node_lists_the_configured_ones():
    s = load_settings(EXAMPLE)
    with pytest.raises(PacsSettingsError, match="hospital, orthanc"):
        s.node("nowhere")


@pytest.mark.parametrize("uid,ok", [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("0", True), ("1.0.3", True),
    ("", False), ("..", False), ("../../etc", False), ("1.2/3", False), ("1.02", False), ("1..2", False),
    ("1.2.", False), ("1" * 65, False), ("1.2\x00", False), ("1.2 ", False), ("/abs", False),
])
def test_uid_validation(uid, ok):
    assert is_valid_uid(uid) is ok


def _instance(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5", **kw) -> tuple[Dataset, bytes]:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    for k, v in kw.items():
        setattr(ds, k, v)
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return header_of(buf.getvalue()), buf.getvalue()


def test_store_layout_duplicates_and_rescan(tmp_path):
    store = InstanceStore(tmp_path)
    ds, raw = _instance()
    rec = store.put(ds, raw)
    assert rec.path == tmp_path / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    store.put(ds, raw)  # a duplicate replaces atomically: one file, same bytes
    assert [p.name for p in tmp_path.rglob("*.dcm")] == ["1.2.3.4.5.dcm"] and rec.path.read_bytes() == raw
    (rec.path.parent / f"{TMP_PREFIX}deadbeef").write_bytes(raw[:100])  # a write cut short by a crash
    again = InstanceStore(tmp_path)
    assert [r.sop_uid for r, _ in again.scan()] == ["1.2.3.4.5"]
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("kw", [{"study": "../x"}, {"series": "1.2/../../x"}, {"sop": ".."}, {"sop": "1." + "2" * 70}])
def test_store_refuses_unsafe_uids(tmp_path, kw):
    ds, raw = _instance(**kw)
    with pytest.raises(UnsafeUidError, match="not a valid DICOM UID"):
        InstanceStore(tmp_path / "s").put(ds, raw)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_store_checks_every_sop_uid_in_a_folder_it_has_named_before(tmp_path):
    """path_for remembers a study/series folder once validated (a retrieval names 200 files in
    one): the SOP Instance UID, and a new folder's UIDs, are still checked every time."""
    store = InstanceStore(tmp_path)
    assert store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5") == tmp_path / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.6") == tmp_path / "1.2.3" / "1.2.3.4" / "1.2.3.4.6.dcm"
    for study, series, sop in [("1.2.3", "1.2.3.4", ".."), ("1.2.3", "1.2.3.4", "../../x"),
                               ("1.2.3", "1.2.3.4", ""), ("1.2.3", "../1.2.3.4", "1.2.3.4.7"), (None, "1.2.3.4", "1.2"),
                               (["1.2.3", "1.2"], "1.2.3.4", "1.2.3.4.8")]:
        with pytest.raises(UnsafeUidError, match="not a valid DICOM UID"):
            store.path_for(study, series, sop)


def _catalog(tmp_path: Path) -> InstanceStore:
    store = InstanceStore(tmp_path)
    rows = [("1.1", "1.1.1", "1.1.1.1", "CT", "DOE^JOHN", "20240101"), ("1.1", "1.1.1", "1.1.1.2", "CT", "DOE^JOHN", "20240101"),
            ("1.1", "1.1.2", "1.1.2.1", "SEG", "DOE^JOHN", "20240101"), ("2.2", "2.2.1", "2.2.1.1", "MR", "ROE^JANE", "20230505")]
    for study, series, sop, mod, name, date in rows:
        ds, raw = _instance(study, series, sop, Modality=mod, PatientName=name, StudyDate=date, PatientID=name[:3])
        store.put(ds, raw)
    return store


def _q(level: str, **kw) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_find_one_answer_per_study_with_computed_keys(tmp_path):
    recs = _catalog(tmp_path).records()
    ans = find_answers(recs, _q("STUDY", StudyInstanceUID="", ModalitiesInStudy="", NumberOfStudyRelatedInstances="",
                                 NumberOfStudyRelatedSeries="", PatientName=""))
    assert len(ans) == 2
    a = {str(d.StudyInstanceUID): d for d in ans}
    assert list(a["1.1"].ModalitiesInStudy) == ["CT", "SEG"]
    assert (a["1.1"].NumberOfStudyRelatedInstances, a["1.1"].NumberOfStudyRelatedSeries) == (3, 2)
    # wildcard (case-insensitive for names), date range, modality in study, UID list
    assert len(find_answers(recs, _q("STUDY", StudyInstanceUID="", PatientName="doe*"))) == 1
    assert len(find_answers(recs, _q("STUDY", StudyInstanceUID="", StudyDate="20231201-"))) == 1
    assert len(find_answers(recs, _q("STUDY", StudyInstanceUID="", StudyDate="-20231231"))) == 1
    assert len(find_answers(recs, _q("STUDY", StudyInstanceUID="", ModalitiesInStudy="SEG"))) == 1
    assert len(find_answers(recs, _q("STUDY", StudyInstanceUID=["1.1", "2.2"]))) == 2
    series = find_answers(recs, _q("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID="", Modality="",
                                   NumberOfSeriesRelatedInstances=""))
    assert [(s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [("CT", 2), ("SEG", 1)]
    assert len(select_instances(recs, _q("SERIES", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1"))) == 2


def test_normalize_deduplicates_per_instance_rows():
    rows = []
    for sop, mod in (("9.1", "CT"), ("9.2", "CT"), ("9.3", "SEG")):
        ds = Dataset()
        ds.StudyInstanceUID, ds.SOPInstanceUID, ds.Modality, ds.PatientID = "5.5", sop, mod, "P1"
        ds.StudyDescription = "" if sop == "9.1" else "CHEST"
        rows.append(ds)
    out = normalize("study", rows)
    assert out == [{"study_uid": "5.5", "patient_id": "P1", "study_description": "CHEST",
                    "modalities": ["CT", "SEG"], "n_instances": 3}]


def test_build_query_rejects_filters_that_do_not_apply():
    assert build_query("series", {"modality": "CT"}).Modality == "CT"
    with pytest.raises(PacsOperationError, match="does not apply at study level"):
        build_query("study", {"sop_uid": "1.2"})
    with pytest.raises(PacsOperationError, match="query level"):
        build_query("frame", {})


# --- write-ahead journal: the listener's durability with one flush per instance -------------------
def _journaled(tmp_path: Path, n: int, capacity: int = 4 << 20) -> tuple[InstanceStore, list]:
    store = InstanceStore(tmp_path)
    assert store.open_journal(capacity) == 0
    puts = []
    for i in range(1, n + 1):
        ds, raw = _instance(sop=f"1.2.3.4.{i}")
        puts.append((store.put(ds, raw), raw))
    return store, puts


def test_journal_restores_acknowledged_instances_lost_with_the_page_cache(tmp_path):
    _store, puts = _journaled(tmp_path, 3)
    # power cut after the acknowledgements, before a checkpoint: the placed files and their new
    # directories were never flushed, so they are gone; the journal was flushed before each ack
    import shutil

    shutil.rmtree(tmp_path / "1.2.3")
    again = InstanceStore(tmp_path)
    assert again.open_journal(4 << 20) == 3
    for rec, raw in puts:
        assert rec.path.read_bytes() == raw
    # the replay flushed and started a new generation: the next start restores nothing
    assert InstanceStore(tmp_path).open_journal(4 << 20) == 0


def test_journal_ignores_a_torn_record_and_what_follows(tmp_path):
    store, puts = _journaled(tmp_path, 2)
    j = store.journal
    # the second record was cut short by the crash (its CRC fails): it was never acknowledged
    import os

    os.pwrite(j.fd, b"\xff", j.offset - 1)
    for rec, _ in puts:
        rec.path.unlink()
    assert InstanceStore(tmp_path).open_journal(4 << 20) == 1
    assert puts[0][0].path.exists() and not puts[1][0].path.exists()


def test_journal_checkpoints_when_full_and_on_close(tmp_path):
    store, puts = _journaled(tmp_path, 60, capacity=1 << 20)  # ~40 kB each: several checkpoints
    j = store.journal
    assert j.generation > 2
    in_journal = len(list(j.records()))
    assert 0 < in_journal < 60  # only what followed the last checkpoint
    assert all(rec.path.read_bytes() == raw for rec, raw in puts)
    store.close()  # checkpoint: a clean restart replays nothing
    assert InstanceStore(tmp_path).open_journal(1 << 20) == 0


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"])
def test_received_file_meta_is_what_pydicom_writes(ts):
    """syncget encodes the File Meta Information itself (fast); it must equal pydicom's encoding of
    pynetdicom's file meta, byte for byte."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    from MedImgAILib.pacs.dimse import part10_head

    for sop_class, sop in (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"), ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.345")):
        buf = DicomBytesIO()
        write_file_meta_info(buf, create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop),
                                                   transfer_syntax=UID(ts)))
        assert part10_head(sop_class, sop, ts) == b"\0" * 128 + b"DICM" + buf.getvalue()


def test_naming_uids_from_the_dataset_start_match_a_full_parse():
    from MedImgAILib.pacs.dimse import naming_uids
    from MedImgAILib.pacs.storage import uids_of

    ds, raw = _instance()
    full = uids_of(raw)
    start = raw.index(b"DICM") + 4 + 12 + int.from_bytes(raw[140:144], "little")  # after the file meta
    fast = naming_uids(memoryview(raw)[start:], str(ds.file_meta.TransferSyntaxUID))
    assert fast == (full.StudyInstanceUID, full.SeriesInstanceUID, full.SOPInstanceUID)
    assert naming_uids(memoryview(raw)[start:], "1.2.840.10008.1.2.1.99") is None  # deflated: full parse


# --- the lean requestor (pacs/dimse.py): what it hard-codes must be what pynetdicom/pydicom say --------
def test_lean_requestor_constants_are_pynetdicoms():
    import pynetdicom
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless)
    from pynetdicom import sop_class as sc

    from MedImgAILib.cli.pacs import LEVELS
    from MedImgAILib.pacs import client, dimse

    assert dimse.IMPLEMENTATION_CLASS_UID == pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    assert dimse.IMPLEMENTATION_VERSION == pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION
    assert dimse.STUDY_ROOT_FIND == sc.StudyRootQueryRetrieveInformationModelFind
    assert dimse.STUDY_ROOT_GET == sc.StudyRootQueryRetrieveInformationModelGet
    assert list(dimse.RECEIVE_TRANSFER_SYNTAXES) == [
        ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
        JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, RLELossless]
    expected = [sc.CTImageStorage, sc.EnhancedCTImageStorage, sc.MRImageStorage, sc.SegmentationStorage,
                sc.Comprehensive3DSRStorage, sc.EnhancedSRStorage, sc.ComprehensiveSRStorage,
                sc.SecondaryCaptureImageStorage, sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                sc.KeyObjectSelectionDocumentStorage, sc.EncapsulatedPDFStorage]
    assert set(expected) <= set(dimse.DEFAULT_STORAGE_CLASSES)
    storage = {str(cx.abstract_syntax) for cx in pynetdicom.AllStoragePresentationContexts}
    assert set(dimse.DEFAULT_STORAGE_CLASSES) <= storage  # every one a real storage class
    assert LEVELS == client.LEVELS


def test_spin_window_grows_for_a_prompt_peer_and_vanishes_for_a_slow_one():
    """The requestor's poll-before-sleep window (dimse.SpinWait) follows the haltpoll rule."""
    from MedImgAILib.pacs.dimse import SpinWait

    spin = SpinWait()
    assert spin.window == 0.0  # nothing polled until a peer has been seen answering promptly
    spin.waited(150e-6)
    assert spin.window == SpinWait.START
    for _ in range(10):
        spin.waited(400e-6)
    assert spin.window == SpinWait.MAX  # doubled up to the cap, never past it
    spin.waited(100e-6)
    assert spin.window == SpinWait.MAX  # a wait within the window changes nothing
    spin.waited(5e-3)
    assert spin.window == SpinWait.MAX / 2
    for _ in range(10):
        spin.waited(5e-3)
    assert spin.window == 0.0  # a slow or idle peer: every wait sleeps at once again


def test_polling_receive_over_a_real_socket():
    """recv_into_exact with a spin window: the bytes arrive whole from a peer that answers at once
    (and the window opens), from one that answers late (and it closes), a peer that closes is
    EOFError and a peer that says nothing still times out through the socket's SO_RCVTIMEO."""
    import socket
    import threading
    import time

    from MedImgAILib.pacs.dimse import SpinWait, recv_into_exact, set_blocking_timeout

    ours, theirs = socket.socketpair()
    set_blocking_timeout(ours, 2.0)
    spin = SpinWait()

    def answer(n: int, delay: float) -> None:  # the peer: n messages of 64 KiB in two writes each
        for i in range(n):
            time.sleep(delay)
            theirs.sendall(bytes([i]) * 40000)
            theirs.sendall(bytes([i]) * 25536)

    def exchange(n: int, delay: float) -> None:
        peer = threading.Thread(target=answer, args=(n, delay))
        peer.start()
        for i in range(n):
            buf = bytearray(65536)
            recv_into_exact(ours, memoryview(buf), spin=spin)
            assert buf == bytes([i]) * 65536
        peer.join()

    exchange(20, 0.0001)
    assert spin.window > 0
    with SpinWait.turn:  # another thread of the process is polling: this one sleeps at once
        exchange(3, 0.0001)
    exchange(12, 0.005)
    assert spin.window == 0.0

    set_blocking_timeout(ours, 0.2)
    spin.window = SpinWait.MAX
    t0 = time.perf_counter()
    with pytest.raises(BlockingIOError):  # SO_RCVTIMEO passed: Association turns it into a DIMSE timeout
        recv_into_exact(ours, memoryview(bytearray(10)), spin=spin)
    assert 0.15 < time.perf_counter() - t0 < 2.0
    theirs.sendall(b"abc")
    theirs.close()
    spin.window = SpinWait.MAX
    with pytest.raises(EOFError):  # three bytes, then the peer is gone
        recv_into_exact(ours, memoryview(bytearray(10)), spin=spin)
    ours.close()


_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "SC_rgb_rle.dcm",
          "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "MR_truncated.dcm"]


@pytest.mark.parametrize("name", _FILES)
def test_dataset_walker_agrees_with_pydicom(name):
    """The listener accepts an instance without decoding it: the walker must find the same naming
    UIDs as pydicom, say which datasets are whole (truncated: no), and leave big endian to pydicom."""
    from MedImgAILib.pacs import dimse

    path = pydicom.data.get_testdata_file(name)
    raw = Path(path).read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ts = str(ds.file_meta.TransferSyntaxUID)
    data = memoryview(raw)[132 + 12 + int.from_bytes(raw[140:144], "little"):]
    whole = dimse.well_formed(data, ts)
    assert whole is (name not in ("MR_small_bigendian.dcm", "MR_truncated.dcm"))
    uids = dimse.naming_uids(data, ts)
    if name == "MR_small_bigendian.dcm":
        assert uids is None
    else:
        assert uids == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    if whole:
        assert not dimse.well_formed(data[:-3], ts)  # cut short
        assert not dimse.well_formed(bytes(data) + b"\x08\x00", ts)  # trailing garbage


def test_quick_settings_are_the_pydantic_defaults(monkeypatch, tmp_path):
    """`pacs get` without a settings file skips pydantic: same defaults, same inline node syntax."""
    from MedImgAILib.pacs.quicksettings import quick_settings
    from MedImgAILib.pacs.settings import PacsSettings

    monkeypatch.delenv("MEDIMGAI_PACS_SETTINGS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    q, p = quick_settings(None), PacsSettings()
    assert q is not None
    assert (q.local_aet, q.max_pdu) == (p.local_aet, p.max_pdu)
    assert vars(q.timeouts) == p.timeouts.model_dump()
    qn, pn = q.node("ORTHANC@127.0.0.1:4242"), p.node("ORTHANC@127.0.0.1:4242")
    assert (qn.aet, qn.host, qn.port, qn.parallel, qn.retrieve, qn.tls, str(qn)) == (
        pn.aet, pn.host, pn.port, pn.parallel, pn.retrieve, pn.tls, str(pn))
    assert quick_settings(None, "OTHER").local_aet == "OTHER"
    with pytest.raises(PacsSettingsError, match="unknown PACS node"):
        q.node("orthanc")
    with pytest.raises(PacsSettingsError, match="not a valid AE title"):
        q.node("BAD\\AE@127.0.0.1:4242")
    assert quick_settings(str(EXAMPLE)) is None  # a settings file: pydantic validates it


def test_journal_keeps_an_acknowledged_instance_it_could_not_place(tmp_path):
    """The listener acknowledges after the journal flush and places the file later; if placing
    fails (a disk full, here a file where its directory must go), no checkpoint may drop the only
    copy: the record survives close, and the next start replays it."""
    ds, raw = _instance(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.9")
    store = InstanceStore(tmp_path)
    store.open_journal(4 << 20)
    path = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.9")
    offset = store.make_durable(path, [raw])
    assert offset is not None and not path.exists()
    (tmp_path / "1.2.3").write_bytes(b"in the way")
    with pytest.raises(OSError):
        store.place(path, (offset, len(raw)))
    with pytest.raises(OSError, match="could not be placed"):
        store.journal.checkpoint()
    store.close()  # logs, keeps the records
    (tmp_path / "1.2.3").unlink()
    again = InstanceStore(tmp_path)
    assert again.open_journal(4 << 20) == 1
    assert path.read_bytes() == raw


def test_journal_crc_is_zlibs(tmp_path):
    """The journal's CRC-32 (ISA-L's, for speed) gives zlib's values, chained over buffers and
    memoryviews as the appends use it: a journal written by either replays with the other."""
    import os
    import zlib

    from MedImgAILib.pacs.storage import Journal

    j = Journal(tmp_path, capacity=2 << 20)
    data = os.urandom(300_001)
    assert j._crc(memoryview(data)[7:], j._crc(b"1.2/3.4/5.dcm")) == zlib.crc32(data[7:], zlib.crc32(b"1.2/3.4/5.dcm"))
    os.close(j.fd)


def test_placing_from_the_journal_copies_the_instance(tmp_path):
    ds, raw = _instance(sop="1.2.3.4.10")
    store = InstanceStore(tmp_path)
    store.open_journal(4 << 20)
    path = store.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    head, body = raw[:1000], memoryview(raw)[1000:]
    offset = store.make_durable(path, [head, body])  # the listener hands over buffers, not one copy
    store.place(path, (offset, len(raw)))
    assert path.read_bytes() == raw
    store.close()
    assert InstanceStore(tmp_path).open_journal(4 << 20) == 0


def test_cli_run_fast_exit_flushes_output_and_keeps_the_status():
    """`python -m MedImgAILib` ends a command that declared ``exit_fast`` (`pacs get`) with
    os._exit, skipping the interpreter's teardown: what it printed must still all arrive (stdout is
    a pipe here: block-buffered), and its exit status must be kept."""
    import subprocess
    import sys

    from Testing.conftest import REPO

    code = ("import MedImgAILib.cli as c\n"
            "def main():\n"
            "    print('x' * 100000)\n"
            "    c._exit_fast = True\n"
            "    return 1\n"
            "c.main = main\n"
            "c.run()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (1, "x" * 100000 + "\n")


def test_listener_contexts_copy_cheaply_and_independently():
    """Each association gets a deep copy of the listener's supported contexts (pynetdicom): ours is
    the same contexts (abstract syntax, transfer syntaxes, roles) as copy.deepcopy's, as independent
    objects, without re-validating every UID (~100 ms per association before). Run in a child
    process: in this test process the ~15,000 UID objects it builds and copies were followed by a
    segfault in a later, unrelated test (test_slicer_module's ast.parse; a latent crash of the
    shared test process, see the Testing commits on main)."""
    import subprocess
    import sys

    from Testing.conftest import REPO

    code = """
import copy
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from MedImgAILib.pacs.listener import _ContextsCopiedCheaply

ae = AE()
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
contexts = ae.supported_contexts

def shape(cxs):
    return [(c.abstract_syntax, c.transfer_syntax, c.scu_role, c.scp_role, c.context_id) for c in cxs]

cheap = copy.deepcopy(_ContextsCopiedCheaply(contexts))
assert shape(cheap) == shape(copy.deepcopy(contexts))
assert all(a is not b and a._transfer_syntax is not b._transfer_syntax for a, b in zip(contexts, cheap))
cheap[0].add_transfer_syntax("1.2.3.4")
assert "1.2.3.4" not in contexts[0].transfer_syntax
print("ok", len(cheap))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


def _open_fds() -> set[str]:
    import os

    return set(os.listdir("/proc/self/fd"))


def test_spare_files_store_complete_named_files_and_replace_atomically(tmp_path):
    """A retrieval's store writes through unnamed files made ahead: each instance appears complete
    under its name, a second copy replaces the first, no temp name is left and no descriptor leaks."""
    before = _open_fds()
    store = InstanceStore(tmp_path, durable=False)
    assert store.use_spare_files(ahead=4)
    payloads = {f"1.2.3.4.{i}": [b"HEAD" * 33, bytes([i]) * (256 * 1024 + i)] for i in range(12)}
    store.expect_files(len(payloads))
    for sop, parts in payloads.items():
        store.put_parts(("1.2.3", "1.2.3.4", sop), parts)
    again = [b"second copy", b"x" * 1000]
    store.put_parts(("1.2.3", "1.2.3.4", "1.2.3.4.0"), again)
    store.close()
    files = {p.stem: p.read_bytes() for p in (tmp_path / "1.2.3" / "1.2.3.4").iterdir()}
    assert files == {sop: b"".join(parts) for sop, parts in {**payloads, "1.2.3.4.0": again}.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.3"]  # the pool's files had no names
    assert _open_fds() <= before | {str(n) for n in range(3)}


def test_spare_file_written_but_not_named_leaves_nothing_after_a_crash(tmp_path):
    """The point of unnamed files: a process killed between writing an instance and naming it
    leaves no file at all (a temp name would stay behind, and a final name would look complete)."""
    import subprocess
    import sys

    code = f"""
import os
from pathlib import Path
from MedImgAILib.pacs.storage import SpareFiles
pool = SpareFiles.start(Path({str(tmp_path)!r}), ahead=8)
fd = pool.take()
os.write(fd, b"half an instance")
os.kill(os.getpid(), 9)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_spare_files_fall_back_for_a_study_folder_on_another_filesystem(tmp_path):
    """A study folder that is a link to another filesystem cannot take a hard link from the pool's
    (EXDEV): that instance is written through a temp name in its own folder instead."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        assert os.stat(other).st_dev != os.stat(tmp_path).st_dev, "/dev/shm must be another filesystem here"
        (tmp_path / "1.2.3").symlink_to(other, target_is_directory=True)
        store = InstanceStore(tmp_path, durable=False)
        assert store.use_spare_files()
        path = store.put_parts(("1.2.3", "1.2.3.4", "1.2.3.4.5"), [b"head", b"body" * 1000])
        store.close()
        assert path.read_bytes() == b"head" + b"body" * 1000
        assert [p.name for p in Path(other, "1.2.3.4").iterdir()] == ["1.2.3.4.5.dcm"]


@pytest.mark.parametrize("columns", [None, "100", "0", "junk"])
def test_cli_help_width_is_what_shutil_gives(monkeypatch, columns):
    """The command line's help formatter reads the terminal width itself (argparse's own import of
    shutil cost `pacs get` ~5 ms of start-up): it must give what shutil would."""
    import shutil

    from MedImgAILib.cli import _terminal_columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _terminal_columns() == shutil.get_terminal_size().columns
