"""The whole loop, as the department runs it: a chest-CT study in, findings with Lung-RADS / Fleischner
categories, SEG + SR + key images out (dciodvfy-clean), and back into the PACS — from a folder, from
Orthanc by C-GET, and unattended when Orthanc routes a study to our listener. Bad inputs leave an error
record and nothing that looks like a result."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from MedImgAILib.errors import MedImgAIError
from MedImgAILib.pipeline import AnalysisOptions, StudyAnalyzer, analyze
from MedImgAILib.results import AnalysisResult

from .conftest import run_cli

NODULES_MM = (6.5, 10.0, 16.0)


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> dict:
    from MedImgAILib.phantoms import NoduleSpec, PhantomSpec, write_phantom_series
    from MedImgAILib.phantoms.spec import AcquisitionSpec, StudyContext

    out = tmp_path_factory.mktemp("phantom")
    spec = PhantomSpec(
        seed=11,
        nodules=[NoduleSpec(type="solid", diameter_mm=d, side=s) for d, s in zip(NODULES_MM, ("right", "left", "right"))],
        acquisition=AcquisitionSpec(matrix=256, fov_mm=360.0, slice_thickness_mm=1.25, tube_current_ma=60.0),
        study=StudyContext(indication="lung cancer screening", patient_age_years=63),
    )
    case = write_phantom_series(spec, out, keep_volume=False)
    return {"dir": out, "files": [str(f) for f in case.files], "truth": case.truth}


def _nearest(result: AnalysisResult, center) -> tuple[float, object]:
    best = min(result.findings, key=lambda f: np.linalg.norm(np.subtract(f.center_lps_mm, center)))
    return float(np.linalg.norm(np.subtract(best.center_lps_mm, center))), best


def _dciodvfy_errors(path: str) -> list[str]:
    r = subprocess.run(["dciodvfy", path], capture_output=True, text=True)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def folder_result(phantom_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("result")
    result = analyze(phantom_study["dir"], out, AnalysisOptions(model_id="ct-lung-nodule", device="cpu"))
    return out, result


def test_every_nodule_is_found_measured_and_categorised(folder_result, phantom_study):
    out, result = folder_result
    assert result.model.id == "ct-lung-nodule" and len(result.model.weights_sha256) == 64
    for n in phantom_study["truth"]["nodules"]:
        dist, f = _nearest(result, n["center_lps_mm"])
        assert dist < n["diameter_mm"] / 2, f"nodule {n['id']} ({n['diameter_mm']} mm) not found"
        assert f.mean_diameter_mm == pytest.approx(n["axial_mean_diameter_mm"], abs=2.0)
        systems = {c.system: c for c in f.categories}
        assert "Lung-RADS" in systems, f.categories
        # screening baseline, solid: the category follows the mean diameter to 0.1 mm
        mean = round(f.mean_diameter_mm + 1e-9, 1)
        expected = "2" if mean < 6 else "3" if mean < 8 else "4A" if mean < 15 else "4B"
        assert systems["Lung-RADS"].value == expected
    assert {c.system for c in result.study_categories} >= {"Lung-RADS"}
    assert result.protocol and result.protocol["id"] and result.protocol["checks"]


def test_outputs_are_final_valid_and_consistent(folder_result):
    out, result = folder_result
    data = json.loads((out / "findings.json").read_text())
    assert data["schema"] == "medimgai.findings/1"
    for key in ("study_instance_uid", "series_instance_uid", "model", "rules", "findings", "study_categories", "outputs", "timings_s"):
        assert key in data
    assert {r["id"] for r in data["rules"]} >= {"lung-rads"}
    assert Path(data["outputs"]["seg"]).name == "seg.dcm" and Path(data["outputs"]["sr"]).name == "sr.dcm"
    assert len(data["outputs"]["key_images"]) == len(result.findings)
    for p in [data["outputs"]["seg"], data["outputs"]["sr"], *data["outputs"]["key_images"]]:
        assert Path(p).exists()
        assert _dciodvfy_errors(p) == [], p
    assert not list(out.glob(".work-*")) and not (out / "error.json").exists()
    for stage in ("load", "protocol", "inference", "findings", "rules", "export", "total"):
        assert stage in data["timings_s"]


def test_cli_prints_the_table_and_fails_cleanly_on_a_non_ct_series(phantom_study, tmp_path):
    mr = tmp_path / "mr"
    mr.mkdir()
    (mr / "mr.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    r = run_cli("analyze", str(mr), "--model", "ct-lung-nodule", "--out", str(tmp_path / "out"), timeout=300)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "CT" in r.stderr, r.stderr
    assert not (tmp_path / "out" / "findings.json").exists()
    err = json.loads((tmp_path / "out" / "error.json").read_text())
    assert err["message"] and err["stage"]


def test_an_empty_study_gives_an_error_record_and_no_result(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedImgAIError):
        analyze(empty, tmp_path / "out", AnalysisOptions(model_id="ct-lung-nodule"))
    assert (tmp_path / "out" / "error.json").exists()
    assert not (tmp_path / "out" / "findings.json").exists() and not (tmp_path / "out" / "seg.dcm").exists()


def test_the_garbage_collector_pauses_until_the_result_is_stored(folder_result, tmp_path):
    """analyze() pauses the cyclic collector on the way to the stored result and always resumes
    it: after a run, after a failed run, and not at all when the caller had it off."""
    import gc

    assert gc.isenabled()  # folder_result's run is over
    with pytest.raises(MedImgAIError):
        analyze(tmp_path / "missing", tmp_path / "out", AnalysisOptions(model_id="ct-lung-nodule"))
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(MedImgAIError):
            analyze(tmp_path / "missing", tmp_path / "out2", AnalysisOptions(model_id="ct-lung-nodule"))
        assert not gc.isenabled()  # the caller's choice stands
    finally:
        gc.enable()


def test_a_series_with_a_missing_slice_is_reported(phantom_study, tmp_path):
    src = tmp_path / "gap"
    src.mkdir()
    files = sorted(phantom_study["files"])
    for i, f in enumerate(files):
        if i != len(files) // 2:
            (src / Path(f).name).write_bytes(Path(f).read_bytes())
    out = tmp_path / "out"
    result = analyze(src, out, AnalysisOptions(model_id="ct-lung-nodule", key_images=False))
    text = " ".join(result.warnings).lower()
    assert "spacing" in text or "missing" in text or "gap" in text, result.warnings


def test_refuse_policy_refuses_a_nonconforming_series_before_inference(phantom_study, tmp_path):
    from MedImgAILib.protocols.conformance import ConformancePolicy

    src = tmp_path / "thick"
    src.mkdir()
    import pydicom

    for f in phantom_study["files"]:
        ds = pydicom.dcmread(f)
        ds.SliceThickness = 7.5  # far outside any chest protocol
        ds.save_as(src / Path(f).name)
    seen: list[str] = []
    with pytest.raises(MedImgAIError, match="protocol"):
        analyze(src, tmp_path / "out", AnalysisOptions(model_id="ct-lung-nodule", policy=ConformancePolicy(on_nonconformant="refuse")),
                progress=lambda _f, msg: seen.append(msg))
    err = json.loads((tmp_path / "out" / "error.json").read_text())
    assert err["stage"] == "protocol"
    assert not (tmp_path / "out" / "findings.json").exists()
    # a header criterion: refused before the model ran
    assert not any(m.startswith("running ") for m in seen), seen


def test_refuse_policy_on_an_image_quality_criterion_stops_before_anything_is_written(phantom_study, tmp_path):
    """Image-quality measures run beside inference; a required one that fails (lungs cut off at both
    ends of the series) still refuses the series, with stage "protocol" and no outputs."""
    from MedImgAILib.protocols.conformance import ConformancePolicy

    src = tmp_path / "cut"
    src.mkdir()
    files = sorted(phantom_study["files"])
    n = len(files)
    for f in files[n // 3 : 2 * n // 3]:  # the middle third of the chest: lung in the first and last slice
        (src / Path(f).name).write_bytes(Path(f).read_bytes())
    out = tmp_path / "out"
    with pytest.raises(MedImgAIError, match="lung_coverage"):
        analyze(src, out, AnalysisOptions(model_id="ct-lung-nodule", device="cpu",
                                          policy=ConformancePolicy(on_nonconformant="refuse")))
    err = json.loads((out / "error.json").read_text())
    assert err["stage"] == "protocol" and "refuse" in err["message"]
    assert sorted(p.name for p in out.iterdir()) == ["error.json"]


def test_overlapped_and_sequential_runs_give_the_same_result(folder_result, phantom_study, tmp_path):
    """Running the NIfTI maps beside the other stages, and the image-quality measures and key
    images after the SEG and SR, changes when things happen, not what comes out."""
    import nibabel as nib
    import pydicom

    out_o, res_o = folder_result
    out_s = tmp_path / "seq"
    res_s = analyze(phantom_study["dir"], out_s, AnalysisOptions(model_id="ct-lung-nodule", device="cpu", overlap=False))

    def comparable(r: AnalysisResult) -> dict:
        d = json.loads(r.model_dump_json())
        for k in ("timings_s", "outputs"):
            d.pop(k, None)
        for f in d["findings"]:
            f.pop("tracking_uid", None)  # a fresh UID per export
        return d

    assert comparable(res_s) == comparable(res_o)
    assert res_s.protocol == res_o.protocol and res_s.warnings == res_o.warnings
    # the default policy does not refuse on image quality: measured after the SEG and SR, in both modes
    assert "image_quality" in res_o.timings_s and "image_quality" in res_s.timings_s
    assert "protocol.background" not in res_o.timings_s
    assert res_o.timings_s["total.results"] < res_o.timings_s["total"]
    for name in ("labels.nii.gz", "instances.nii.gz"):
        a, b = (np.asarray(nib.load(str(d / name)).dataobj) for d in (out_o, out_s))
        assert np.array_equal(a, b), name
    seg_o, seg_s = (pydicom.dcmread(d / "seg.dcm") for d in (out_o, out_s))
    assert np.array_equal(seg_o.pixel_array, seg_s.pixel_array)
    assert [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg_o.PerFrameFunctionalGroupsSequence] == \
           [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg_s.PerFrameFunctionalGroupsSequence]


def test_pacs_study_is_retrieved_analysed_and_stored_back(orthanc, in_ns, phantom_study, tmp_path):
    from MedImgAILib.pacs import client
    from MedImgAILib.pacs.settings import PacsSettings

    orthanc.upload([Path(f) for f in phantom_study["files"]])
    study_uid = phantom_study["truth"]["study_instance_uid"]
    r = run_cli("analyze", f"{orthanc.node}:{study_uid}", "--model", "ct-lung-nodule", "--out", str(tmp_path / "out"),
                "--send", orthanc.node, "--no-key-images", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Lung-RADS" in r.stdout
    s = PacsSettings()
    series = client.find(s.node(orthanc.node), s, "series", study_uid=study_uid)
    assert {x.get("modality") for x in series} >= {"CT", "SEG", "SR"}


def test_listener_triggers_analysis_when_orthanc_routes_a_study(orthanc, in_ns, phantom_study, tmp_path):
    from MedImgAILib.pacs import client
    from MedImgAILib.pacs.listener import Listener, ListenerConfig
    from MedImgAILib.pacs.settings import PacsSettings

    orthanc.upload([Path(f) for f in phantom_study["files"]])
    study_uid = phantom_study["truth"]["study_instance_uid"]
    s = PacsSettings(local_aet="LISTENER")
    analyzer = StudyAnalyzer(tmp_path / "results", AnalysisOptions(send_to=orthanc.node, pacs_settings=s, key_images=False))
    listener = Listener(ListenerConfig(aet="LISTENER", host="127.0.0.1", port=11114, store_dir=tmp_path / "store",
                                       quiet_seconds=2.0, min_free_mb=10), on_study_complete=analyzer).start()
    try:
        before = {x["series_uid"] for x in client.find(s.node(orthanc.node), s, "series", study_uid=study_uid)}
        # Orthanc routes the study to us (what a PACS auto-routing rule does)
        res = client.retrieve(s.node(orthanc.node), s, study_uid, tmp_path / "unused", method="move", move_destination="LISTENER",
                              series_uids=[phantom_study["truth"]["series_instance_uid"]])
        assert res.complete, res.errors
        deadline = time.monotonic() + 600
        while not analyzer.done and time.monotonic() < deadline:
            time.sleep(0.5)
        analyzer.join()
    finally:
        listener.stop()
        analyzer.close()
    assert analyzer.done == [(study_uid, "ok")], analyzer.done
    result = AnalysisResult.read(tmp_path / "results" / study_uid / "findings.json")
    assert result.model.id == "ct-lung-nodule"  # chosen by matching the series against the cards
    after = client.find(s.node(orthanc.node), s, "series", study_uid=study_uid)
    new = [x for x in after if x["series_uid"] not in before]
    assert {x.get("modality") for x in new} >= {"SEG", "SR"}


def test_a_t1_mr_series_goes_to_the_hippocampus_model_and_out_as_seg_and_sr(tmp_path):
    """An MR head T1 (written as a sagittal DICOM series) is matched to mr-hippocampus by its metadata,
    and the volumes reach findings.json, the SEG and the SR unchanged."""
    from MedImgAILib.dicom.mr_series_writer import write_mr_series
    from MedImgAILib.models.hippodeep.inputs import load_t1

    from Testing.conftest import shared_dir

    hd = shared_dir() / "models" / "hippodeep"
    t1 = load_t1(hd / "example_brain_t1.nii.gz")
    write_mr_series(t1, tmp_path / "t1", "sagittal")
    out = tmp_path / "out"
    result = analyze(tmp_path / "t1", out, AnalysisOptions(weights_dir=str(hd), device="cpu"))
    assert result.model.id == "mr-hippocampus"
    m = result.study_measurements
    assert m["etiv_mm3"] == pytest.approx(1439994.390625, rel=0.005)
    assert m["hippocampus_left_mm3"] == pytest.approx(3160.5540199279785, rel=0.005)
    assert m["hippocampus_right_mm3"] == pytest.approx(3343.7832136154175, rel=0.005)
    assert [f.label for f in result.findings] == ["Left hippocampus", "Right hippocampus"]
    for p in (result.outputs.seg, result.outputs.sr):
        assert p and _dciodvfy_errors(p) == [], p
    assert json.loads((out / "findings.json").read_text())["study_measurements"]["hippocampal_fraction_of_etiv"] > 0


_SEG_AND_SR_ONLY = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[SegAndSr]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = SegmentationStorage\\Uncompressed
PresentationContext3 = Comprehensive3DSRStorage\\Uncompressed

[[Profiles]]
[SegAndSrOnly]
PresentationContexts = SegAndSr
"""


def test_a_failure_after_the_result_is_stored_says_what_the_pacs_holds(in_ns, netns, phantom_study, tmp_path):
    """SEG and SR are stored before the key images are drawn. A PACS that takes SEG and SR but no
    Secondary Capture (DCMTK's storescp with a profile of those two classes) fails the key-image
    step: error.json names that stage and the objects the PACS already holds, and nothing in the
    output folder looks like a result."""
    from Testing.conftest import require_tool

    cfg = tmp_path / "storescp.cfg"
    cfg.write_text(_SEG_AND_SR_ONLY)
    pacs_dir, out, port = tmp_path / "pacs", tmp_path / "out", 11470
    pacs_dir.mkdir()
    proc = subprocess.Popen(netns.cmd(require_tool("storescp"), "-aet", "SEGSR", "-od", str(pacs_dir), "-xf", str(cfg),
                                      "SegAndSrOnly", str(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        netns.wait_port(port, proc=proc)
        node = f"SEGSR@127.0.0.1:{port}"
        with pytest.raises(MedImgAIError):
            analyze(phantom_study["dir"], out, AnalysisOptions(model_id="ct-lung-nodule", device="cpu", send_to=node))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    err = json.loads((out / "error.json").read_text())
    assert err["stage"] == "key_images", err
    assert "refused 3 of 3" in err["message"], err["message"]
    assert "accepted no presentation context for Secondary Capture Image Storage" in err["message"], err["message"]
    assert err["already_stored"] == {"node": node, "objects": ["seg.dcm", "sr.dcm"]}
    assert sorted(p.name for p in out.iterdir()) == ["error.json"]
    stored = sorted(pacs_dir.iterdir())
    assert len(stored) == 2 and {p.name[:2] for p in stored} == {"SG", "SR"}  # storescp's modality prefixes
