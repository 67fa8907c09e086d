"""The Review and Export panels' logic on real slicer-core MRML, with the real findings stage, the real
rule sets and the real SEG/SR export.

Given a small chest-like CT with two solid nodules that the findings stage measured and Lung-RADS
v2022 categorized (as ``medimgai analyze`` does), a radiologist in Slicer erodes one segment, moves a
diameter line, deletes a segment, draws a new one, accepts or rejects: these tests check what the
corrected result, the correction records, the tracking store and the exported SEG/SR then say.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from MedImgAILib.findings.extract import partial_volume_mm3
from MedImgAILib.results import AnalysisResult, ModelRef
from MedImgAILib.scene import new_scene
from MedImgAILib.scene.build import TAG_FINDING, segment_tag
from MedImgAILib.scene.convert import ijk_to_ras_matrix, lps_to_ras
from MedImgAILib.scene.session import ReviewError, ReviewSession
from MedImgAILib.tracking import ResultStore
from MedImgAILib.volume import Volume, affine_from_geometry

from Testing.unit.review_data import CONTEXT, LESIONS, SPACING, ai_result, small_chest_ct, write_ct_series, write_analysis_dir


@pytest.fixture(scope="module")
def case():
    """(volume, instance map, AI result): the findings stage and the Lung-RADS rule set on the CT."""
    vol, truth = small_chest_ct()
    result, instance = ai_result(vol, truth)
    return vol, instance, result


@pytest.fixture()
def session(case):
    vol, instance, result = case
    return ReviewSession(vol, instance, result.model_copy(deep=True), ctx=new_scene())


def _set_segment_mask(session: ReviewSession, segment_id: str, mask: np.ndarray) -> None:
    """What the Segment Editor does: replace a segment's binary labelmap on the source grid."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    nk, nj, ni = mask.shape
    img = slicer.vtkOrientedImageData()
    img.SetDimensions(ni, nj, nk)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
    scalars[:] = np.ascontiguousarray(mask.astype(np.uint8)).ravel()
    img.SetImageToWorldMatrix(ijk_to_ras_matrix(session.volume.affine))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(img, session.nodes.segmentation, segment_id, logic.MODE_REPLACE, img.GetExtent())


def _add_segment(session: ReviewSession, mask: np.ndarray) -> None:
    """A segment the radiologist drew (no finding tag): imported from a labelmap, as Slicer does."""
    from MedImgAILib.scene.convert import image_data_from_array

    ctx = session.ctx
    lab = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "drawn")
    lab.SetAndObserveImageData(image_data_from_array(mask.astype(np.uint8)))
    lab.SetIJKToRASMatrix(ijk_to_ras_matrix(session.volume.affine))
    assert ctx.segmentations.ImportLabelmapToSegmentationNode(lab, session.nodes.segmentation)
    ctx.scene.RemoveNode(lab)


def _by_id(corrected):
    return {c.finding_id: c for c in corrected.corrections}, {f.id: f for f in corrected.result.findings}


# --------------------------------------------------------------------------------------------------


def test_the_ai_result_is_what_the_radiologist_starts_from(case):
    vol, instance, result = case
    f1, f2 = result.findings
    assert f1.categories[0].system == "Lung-RADS" and f1.categories[0].value == "4A"  # ~9 mm solid
    assert f2.categories[0].value == "2"  # ~5 mm solid
    assert result.study_categories[0].value == "4A"
    assert set(np.unique(instance)) == {0, 1, 2}


def test_nothing_changed_means_nothing_corrected(session, case):
    corrected = session.remeasure(observer="Doe^Jane")
    recs, found = _by_id(corrected)
    assert {r.action for r in recs.values()} == {"unreviewed"}
    assert [c.value for c in found["F1"].categories] == ["4A"]
    assert found["F1"].volume_mm3 == pytest.approx(case[2].findings[0].volume_mm3)


def test_accept_and_reject_are_segment_tags_and_corrections(session):
    session.accept("F1")
    session.reject("F2")
    assert session.status("F1") == "accepted" and session.status("F2") == "rejected"
    # the rejected finding is hidden in the views, its row stays in the table marked
    assert not session.nodes.segmentation.GetDisplayNode().GetSegmentVisibility(session.nodes.segment_ids["F2"])
    _, rows = session.table_rows()
    assert [r[-1] for r in rows] == ["accepted", "rejected"]
    corrected = session.remeasure(observer="Doe^Jane")
    recs, found = _by_id(corrected)
    assert recs["F1"].action == "accepted" and recs["F2"].action == "rejected"
    assert "F2" not in found and found["F1"].status == "accepted"
    assert recs["F1"].observer == "Doe^Jane"
    with pytest.raises(ReviewError, match="status 'maybe'"):
        session.set_status("F1", "maybe")
    # a verdict after re-measuring keeps the corrected result current
    session.set_status("F2", "ai")
    assert [f.status for f in session.findings] == ["accepted", "ai"]
    assert {c.finding_id: c.action for c in session.corrected.corrections} == {"F1": "accepted", "F2": "unreviewed"}


def test_eroded_segment_is_remeasured_with_dice_and_volume_change_from_numpy(session, case):
    vol, instance, result = case
    ai_mask = instance == result.findings[0].instance_value
    eroded = ndimage.binary_erosion(ai_mask)
    _set_segment_mask(session, session.nodes.segment_ids["F1"], eroded)
    corrected = session.remeasure(observer="Doe^Jane")
    recs, found = _by_id(corrected)
    rec = recs["F1"]
    assert rec.action == "edited" and rec.what_changed == ["segmentation"]
    expected_dice = 2 * (eroded & ai_mask).sum() / (eroded.sum() + ai_mask.sum())
    assert rec.dice == pytest.approx(expected_dice, abs=1e-12)
    # volumes as the pipeline measures them (partial-volume occupancy at the mask edge, so the AI's and
    # the corrected volume are comparable); here the eroded mask lies inside the uniform nodule, so
    # that is the voxel count up to noise
    vox = vol.voxel_volume_mm3
    assert found["F1"].volume_mm3 == pytest.approx(partial_volume_mm3(eroded, vol.array, vox), rel=1e-9)
    assert found["F1"].volume_mm3 == pytest.approx(eroded.sum() * vox, rel=0.02)
    ai_volume = result.findings[0].volume_mm3
    assert rec.volume_change_pct == pytest.approx(100.0 * (found["F1"].volume_mm3 - ai_volume) / ai_volume)
    assert rec.volume_change_pct == pytest.approx(100.0 * (eroded.sum() - ai_mask.sum()) / ai_mask.sum(), abs=2.0)
    # really re-measured by the findings stage: smaller axes, lines moved with them, same identity
    assert found["F1"].mean_diameter_mm < result.findings[0].mean_diameter_mm - 0.5
    assert found["F1"].long_axis_lps_mm != result.findings[0].long_axis_lps_mm
    assert found["F1"].type == "solid" and found["F1"].id == "F1" and found["F1"].instance_value == 1
    assert recs["F2"].action == "unreviewed" and recs["F2"].dice is None
    # the lines now show the re-measured axes; re-measuring again changes nothing more
    assert session.nodes.lines["F1"]["long"].GetLineLengthWorld() == pytest.approx(found["F1"].long_axis_mm)
    assert session.nodes.lines["F1"]["short"].GetLineLengthWorld() == pytest.approx(found["F1"].short_axis_mm)
    again = session.remeasure(observer="Doe^Jane")
    assert again.corrections[0].what_changed == ["segmentation"]
    assert again.result.findings[0].mean_diameter_mm == pytest.approx(found["F1"].mean_diameter_mm)


def test_a_line_moved_after_a_segment_edit_wins(session, case):
    _set_segment_mask(session, session.nodes.segment_ids["F1"], ndimage.binary_erosion(case[1] == 1))
    first = session.remeasure()
    f = first.result.findings[0]
    a, b = np.asarray(f.long_axis_lps_mm)
    end = a + (b - a) / np.linalg.norm(b - a) * 4.0
    session.nodes.lines["F1"]["long"].SetNthControlPointPositionWorld(1, *[float(x) for x in lps_to_ras(end)])
    second = session.remeasure()
    assert second.corrections[0].what_changed == ["segmentation", "long axis line"]
    assert second.result.findings[0].long_axis_mm == pytest.approx(4.0)
    assert second.result.findings[0].volume_mm3 == pytest.approx(f.volume_mm3)  # the mask's volume stays


def test_shortened_long_axis_moves_the_nodule_across_a_lung_rads_boundary(session, case):
    f = case[2].findings[0]
    assert 8.0 <= f.mean_diameter_mm < 15.0  # Lung-RADS 4A as the AI measured it
    line = session.nodes.lines["F1"]["long"]
    a, b = np.asarray(f.long_axis_lps_mm)
    new_end = a + (b - a) / np.linalg.norm(b - a) * 5.0  # the reader says: 5 mm, not ~9
    line.SetNthControlPointPositionWorld(1, *[float(x) for x in lps_to_ras(new_end)])
    corrected = session.remeasure(observer="Doe^Jane")
    recs, found = _by_id(corrected)
    assert found["F1"].long_axis_mm == pytest.approx(5.0, abs=1e-6)
    assert found["F1"].mean_diameter_mm == pytest.approx((5.0 + f.short_axis_mm) / 2)
    assert found["F1"].mean_diameter_mm < 8.0
    assert recs["F1"].what_changed == ["long axis line"]
    assert recs["F1"].ai_categories == ["Lung-RADS 4A"] and recs["F1"].corrected_categories == ["Lung-RADS 3"]
    assert corrected.result.study_categories[-1].value == "3"  # the study follows its most suspicious nodule
    assert "Lung-RADS 3" in session.study_category_text()
    # the scene's table shows the corrected category
    t = session.nodes.table.GetTable()
    cols = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())]
    assert t.GetValue(0, cols.index("Categories")).ToString() == "Lung-RADS 3"


def test_deleted_segment_is_a_rejected_finding(session):
    session.nodes.segmentation.GetSegmentation().RemoveSegment(session.nodes.segment_ids["F2"])
    assert session.status("F2") == "rejected"
    corrected = session.remeasure(observer="Doe^Jane")
    recs, found = _by_id(corrected)
    assert recs["F2"].action == "rejected" and recs["F2"].what_changed == ["segment deleted"]
    assert set(found) == {"F1"}


def test_added_segment_is_measured_and_categorized(session, case):
    vol = case[0]
    kk, jj, ii = np.indices(vol.array.shape)
    ci, cj, ck = 20, 58, 12  # where the radiologist saw a nodule the model missed
    drawn = ((ii - ci) * SPACING[0]) ** 2 + ((jj - cj) * SPACING[1]) ** 2 + ((kk - ck) * SPACING[2]) ** 2 <= 3.5**2
    _add_segment(session, drawn)
    corrected = session.remeasure(observer="Doe^Jane")
    recs, found = _by_id(corrected)
    assert recs["R1"].action == "added" and found["R1"].status == "added"
    assert found["R1"].volume_mm3 == pytest.approx(partial_volume_mm3(drawn, vol.array, vol.voxel_volume_mm3), rel=1e-9)
    assert found["R1"].volume_mm3 == pytest.approx(drawn.sum() * vol.voxel_volume_mm3, rel=0.03)
    assert found["R1"].center_lps_mm == pytest.approx(list(vol.ijk_to_lps([ci, cj, ck])), abs=0.05)
    assert 5.5 < found["R1"].mean_diameter_mm < 8.0
    assert [c.value for c in found["R1"].categories] == ["3"]  # measured, then judged like the others
    assert recs["R1"].corrected_categories == ["Lung-RADS 3"]


def test_corrections_are_recorded_in_the_tracking_store(session, tmp_path, case):
    store = ResultStore(tmp_path / "results.db")
    session.reject("F2")
    _set_segment_mask(session, session.nodes.segment_ids["F1"], ndimage.binary_erosion(case[1] == 1))
    rid = session.record(store, observer="Doe^Jane")
    rows = {c["finding_id"]: c for c in store.corrections(rid)}
    assert rows["F2"]["action"] == "rejected" and rows["F1"]["action"] == "edited"
    assert rows["F1"]["dice"] == pytest.approx(session.corrected.corrections[0].dice)
    assert rows["F1"]["observer"] == "Doe^Jane"
    # reviewed: off the AI worklist
    assert store.worklist(status="ai") == [] and store.worklist(status="reviewed")[0]["result_id"] == rid


def test_a_review_saved_as_mrb_reopens_with_its_edits(session, case, tmp_path):
    from MedImgAILib.scene.io import load_mrb, save_mrb

    eroded = ndimage.binary_erosion(case[1] == 1)
    _set_segment_mask(session, session.nodes.segment_ids["F1"], eroded)
    session.reject("F2")
    before = session.remeasure(observer="Doe^Jane")
    reopened = ReviewSession.from_scene(load_mrb(save_mrb(session.ctx, tmp_path / "review.mrb")))
    np.testing.assert_array_equal(reopened.volume.array, case[0].array)
    np.testing.assert_allclose(reopened.volume.affine, case[0].affine, atol=1e-6)
    assert reopened.volume.source_sop_instance_uids == case[0].source_sop_instance_uids
    assert reopened.status("F2") == "rejected" and sorted(reopened.nodes.lines) == ["F1", "F2"]
    after = reopened.remeasure(observer="Doe^Jane")
    assert [(c.finding_id, c.action, c.dice) for c in after.corrections] == \
        [(c.finding_id, c.action, c.dice) for c in before.corrections]
    assert after.result.findings[0].volume_mm3 == pytest.approx(before.result.findings[0].volume_mm3)
    with pytest.raises(ReviewError, match="no MedImgAI result"):
        ReviewSession.from_scene(new_scene())


def test_jump_to_centres_the_view_on_the_finding(session, case):
    f = case[2].findings[0]
    # the measured slice: the middle of the long axis, in RAS
    mid = np.mean(f.long_axis_lps_mm, axis=0)
    np.testing.assert_allclose(session.center_ras("F1"), [-mid[0], -mid[1], mid[2]])
    assert abs(mid[2] - case[0].ijk_to_lps([0, 0, f.slice_index])[2]) < 1e-6
    img = session.render_finding("F1", size=(192, 192), field_of_view_mm=60.0)
    inside = np.asarray(f.center_lps_mm[:2] + [mid[2]]) + [1.5, 1.5, 0.0]
    r, c = img.lps_to_pixel(inside)
    red, green, blue = (int(x) for x in img.rgb[r, c])
    assert red > green + 25 and red > blue + 25, img.rgb[r, c]  # the segment's colour over the lesion
    r, c = img.lps_to_pixel(np.asarray(inside) + [12.0, 0.0, 0.0])  # lung beside it: grey
    g = img.rgb[r, c].astype(int)
    assert abs(g[0] - g[1]) < 8 and abs(g[1] - g[2]) < 8, g
    # the long-axis line is drawn in this view: its yellow end points are there
    r, c = img.lps_to_pixel(f.long_axis_lps_mm[0])
    patch = img.rgb[max(0, r - 3): r + 4, max(0, c - 3): c + 4].reshape(-1, 3).astype(int)
    assert ((patch[:, 0] > 180) & (patch[:, 1] > 140) & (patch[:, 2] < 100)).any(), patch


# --------------------------------------------------------------------------------------------------
# From an analysis folder, to SEG + SR
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysis_dir(case, tmp_path_factory):
    vol, instance, result = case
    root = tmp_path_factory.mktemp("analysis")
    src = write_ct_series(vol, root / "series")
    return write_analysis_dir(root / "out", src, instance, result)


def test_open_from_an_analysis_folder(analysis_dir, case):
    s = ReviewSession.open(analysis_dir)
    vol = case[0]
    np.testing.assert_allclose(s.volume.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(s.volume.array.astype(np.int16), vol.array)
    assert len(s.sources) == vol.array.shape[0]
    assert s.nodes.segmentation.GetSegmentation().GetNumberOfSegments() == 2
    assert sorted(s.nodes.segment_ids) == ["F1", "F2"]


def test_open_refuses_a_folder_without_findings(tmp_path):
    with pytest.raises(ReviewError, match="no findings.json"):
        ReviewSession.open(tmp_path)


def test_export_writes_the_corrected_seg_and_sr_with_the_radiologist(analysis_dir, case, tmp_path):
    s = ReviewSession.open(analysis_dir)
    eroded = ndimage.binary_erosion(case[1] == 1)
    _set_segment_mask(s, s.nodes.segment_ids["F1"], eroded)
    s.reject("F2")
    with pytest.raises(ReviewError, match="observer"):
        s.export(tmp_path / "x", observer=" ")
    out = s.export(tmp_path / "final", observer="Doe^Jane", key_images=True)
    assert out.seg.name == "seg.dcm" and out.sr.name == "sr.dcm" and len(out.key_images) == 1
    seg = pydicom.dcmread(out.seg)
    assert len(seg.SegmentSequence) == 1  # F2 rejected: not exported
    assert seg.SegmentSequence[0].SegmentLabel.startswith("F1")
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    seg_numbers = [(fg if "SegmentIdentificationSequence" in fg else shared).SegmentIdentificationSequence[0].ReferencedSegmentNumber
                   for fg in seg.PerFrameFunctionalGroupsSequence]
    assert int(frames[np.asarray(seg_numbers) == 1].sum()) == int(eroded.sum())  # the edited mask, voxel for voxel
    sr = pydicom.dcmread(out.sr)
    observers = [str(item.PersonName) for item in sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == "121008"]
    assert observers == ["Doe^Jane"]
    assert sr.VerificationFlag == "VERIFIED"
    final = AnalysisResult.read(out.findings_json)
    assert [f.id for f in final.findings] == ["F1"] and final.context["observer"] == "Doe^Jane"
    assert final.findings[0].volume_mm3 == pytest.approx(partial_volume_mm3(eroded, case[0].array, case[0].voxel_volume_mm3))
    assert (out.out_dir / "corrections.json").is_file()
    assert not list(out.out_dir.rglob("*partial*"))


def test_export_sends_seg_sr_and_key_images_to_a_pacs_node(analysis_dir, tmp_path):
    """To a real DICOM Storage SCP (the project's listener, pynetdicom, on 127.0.0.1), by AET@host:port."""
    from MedImgAILib.pacs.listener import Listener, ListenerConfig
    from MedImgAILib.pacs.settings import PacsSettings

    listener = Listener(ListenerConfig(aet="REVIEWPACS", port=0, store_dir=tmp_path / "pacs", min_free_mb=0,
                                       query_retrieve=False)).start()
    try:
        s = ReviewSession.open(analysis_dir)
        s.accept("F1")
        out = s.export(tmp_path / "final", observer="Doe^Jane", send_to=f"REVIEWPACS@127.0.0.1:{listener.port}",
                       pacs_settings=PacsSettings(local_aet="SLICER"))
    finally:
        listener.stop()
    assert out.sent["sent"] == len(out.files) == 4 and out.sent["failed"] == 0  # SEG, SR, 2 key images
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
              for p in (tmp_path / "pacs").rglob("*") if p.is_file() and not p.name.startswith(".")}
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.files}
    assert sent <= stored
