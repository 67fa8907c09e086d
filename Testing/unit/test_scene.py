"""The scene layer on real slicer-core MRML: what a radiologist sees in Slicer after an analysis.

A small oblique-free CT with two spherical lesions and an AI result describing them: the nodes, their
codes and places, the rendered overlay, and a save/reload through a .mrb bundle.
"""

from __future__ import annotations

import numpy as np
import pytest

from MedImgAILib.results import AnalysisResult, Category, Code, Finding, ModelRef
from MedImgAILib.scene import build_result_nodes, new_scene, render_slice
from MedImgAILib.scene.build import SegmentSpec, TAG_FINDING, segment_tag
from MedImgAILib.scene.convert import affine_lps_from_node, array_from_image_data
from MedImgAILib.scene.io import first_node, load_mrb, save_mrb
from MedImgAILib.volume import Volume, affine_from_geometry

LESIONS = {  # id -> (centre ijk, radius mm, label value)
    "F1": ((40, 22, 12), 5.0, 1),
    "F2": ((18, 44, 8), 3.5, 2),
}


def small_ct() -> tuple[Volume, np.ndarray, AnalysisResult]:
    spacing = (0.8, 0.8, 1.25)
    shape = (24, 64, 64)  # k, j, i
    kk, jj, ii = np.mgrid[: shape[0], : shape[1], : shape[2]]
    arr = np.full(shape, -850, np.int16)
    labels = np.zeros(shape, np.uint8)
    vol = Volume(array=arr, affine=affine_from_geometry((-30.0, -40.0, -100.0), spacing, np.eye(3)), modality="CT",
                 series_instance_uid="1.2.826.0.1.3680043.8.498.1", study_instance_uid="1.2.826.0.1.3680043.8.498.2")
    findings = []
    for fid, ((ci, cj, ck), r, value) in LESIONS.items():
        d2 = ((ii - ci) * spacing[0]) ** 2 + ((jj - cj) * spacing[1]) ** 2 + ((kk - ck) * spacing[2]) ** 2
        inside = d2 <= r * r
        arr[inside] = 30
        labels[inside] = value
        c = vol.ijk_to_lps([ci, cj, ck])
        findings.append(Finding(
            id=fid, label="nodule", instance_value=value, type="solid", center_lps_mm=list(c),
            volume_mm3=float(inside.sum()) * vol.voxel_volume_mm3, long_axis_mm=2 * r, short_axis_mm=2 * r,
            mean_diameter_mm=2 * r, slice_index=ck,
            long_axis_lps_mm=[list(c - [r, 0, 0]), list(c + [r, 0, 0])],
            short_axis_lps_mm=[list(c - [0, r, 0]), list(c + [0, r, 0])],
            categories=[Category(system="Lung-RADS", version="v2022", value="4A" if r > 4 else "3", recommendation="follow-up")],
        ))
    result = AnalysisResult(study_instance_uid=vol.study_instance_uid, series_instance_uid=vol.series_instance_uid,
                            model=ModelRef(id="ct-lung-nodule", version="1.0.0"), findings=findings)
    return vol, labels, result


SPEC = SegmentSpec(
    category=Code(value="49755003", scheme="SCT", meaning="Morphologically Altered Structure"),
    type=Code(value="27925004", scheme="SCT", meaning="Nodule"),
    region=Code(value="39607008", scheme="SCT", meaning="Lung"),
    color=(1.0, 0.0, 0.0),
)


@pytest.fixture(scope="module")
def built():
    vol, labels, result = small_ct()
    ctx = new_scene()
    nodes = build_result_nodes(ctx, vol, labels, result, specs={"nodule": SPEC}, study_name="CT chest")
    return ctx, nodes, vol, labels, result


def test_volume_node_is_in_ras_with_the_same_voxels(built):
    ctx, nodes, vol, _, _ = built
    np.testing.assert_allclose(affine_lps_from_node(nodes.volume), vol.affine)
    np.testing.assert_array_equal(array_from_image_data(nodes.volume.GetImageData()), vol.array)
    origin_ras = nodes.volume.GetOrigin()
    np.testing.assert_allclose(origin_ras, [30.0, 40.0, -100.0])  # LPS x, y negated


def test_one_segment_per_finding_with_codes_and_algorithm_tags(built):
    _, nodes, _, labels, result = built
    seg = nodes.segmentation.GetSegmentation()
    assert seg.GetNumberOfSegments() == 2
    for f in result.findings:
        segment = seg.GetSegment(nodes.segment_ids[f.id])
        assert segment.GetName() == f"{f.id} nodule"
        term = segment_tag(segment, segment.GetTerminologyEntryTagName())
        assert "SCT^27925004^Nodule" in term and "SCT^49755003^" in term and "SCT^39607008^Lung" in term
        assert segment_tag(segment, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"
        assert segment_tag(segment, "DICOM.SegmentAlgorithmName") == "ct-lung-nodule 1.0.0"
        assert segment_tag(segment, TAG_FINDING) == f.id


def test_lines_measure_what_the_finding_says(built):
    _, nodes, _, _, result = built
    for f in result.findings:
        assert nodes.lines[f.id]["long"].GetLineLengthWorld() == pytest.approx(f.long_axis_mm)
        assert nodes.lines[f.id]["short"].GetLineLengthWorld() == pytest.approx(f.short_axis_mm)
        p = [0.0, 0.0, 0.0]
        nodes.lines[f.id]["long"].GetNthControlPointPositionWorld(0, p)
        # RAS in the scene = LPS with x and y negated
        assert p == pytest.approx([-f.long_axis_lps_mm[0][0], -f.long_axis_lps_mm[0][1], f.long_axis_lps_mm[0][2]])


def test_table_lists_findings_with_categories(built):
    _, nodes, _, _, result = built
    t = nodes.table.GetTable()
    assert t.GetNumberOfRows() == 2
    cols = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())]
    row0 = {cols[c]: t.GetValue(0, c).ToString() for c in range(len(cols))}
    assert row0["Finding"] == "F1" and row0["Categories"] == "Lung-RADS 4A"
    assert float(row0["Long axis (mm)"]) == pytest.approx(10.0)


def test_everything_sits_under_the_study_in_the_subject_hierarchy(built):
    ctx, nodes, vol, _, _ = built
    sh = ctx.scene.GetSubjectHierarchyNode()
    assert sh.GetItemUID(nodes.study_item, "DICOM") == vol.study_instance_uid
    for node in (nodes.volume, nodes.segmentation, nodes.table, nodes.lines["F1"]["long"]):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == nodes.study_item


def test_rendered_overlay_lands_on_the_lesion(built, tmp_path):
    ctx, nodes, vol, _, result = built
    f = result.findings[0]
    img = render_slice(ctx, nodes.volume, center_lps=f.center_lps_mm, size=(256, 256))
    img.save_png(tmp_path / "axial.png")
    assert (tmp_path / "axial.png").stat().st_size > 0
    # a point inside the lesion, off both measurement lines: the red segment fill over the image
    inside = np.asarray(f.center_lps_mm) + [2.0, 2.0, 0.0]
    r, c = img.lps_to_pixel(inside)
    red, green, blue = (int(x) for x in img.rgb[r, c])
    assert red > 2 * green and red > 2 * blue, img.rgb[r, c]
    # lung background away from lesions is grey (lung window, -850 HU)
    r, c = img.lps_to_pixel(np.asarray(f.center_lps_mm) + [-15.0, 10.0, 0.0])
    g = img.rgb[r, c].astype(int)
    assert abs(g[0] - g[1]) < 5 and abs(g[1] - g[2]) < 5 and 40 < g[0] < 140
    # patient left (LPS +x) is on the viewer's right in an axial view
    r1, c1 = img.lps_to_pixel(np.asarray(f.center_lps_mm) + [10.0, 0, 0])
    r0, c0 = img.lps_to_pixel(f.center_lps_mm)
    assert c1 > c0 and r1 == r0


def test_repeated_renders_are_identical(built):
    ctx, nodes, _, _, result = built
    a = render_slice(ctx, nodes.volume, center_lps=result.findings[1].center_lps_mm, size=(128, 128))
    b = render_slice(ctx, nodes.volume, center_lps=result.findings[1].center_lps_mm, size=(128, 128))
    np.testing.assert_array_equal(a.rgb, b.rgb)


def test_scene_survives_an_mrb_round_trip(built, tmp_path):
    ctx, nodes, vol, labels, result = built
    path = save_mrb(ctx, tmp_path / "review.mrb")
    assert path.exists() and not list(tmp_path.glob("*partial*"))
    ctx2 = load_mrb(path)
    seg = first_node(ctx2, "vtkMRMLSegmentationNode")
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    s0 = seg.GetSegmentation().GetNthSegment(0)
    assert segment_tag(s0, TAG_FINDING) in {"F1", "F2"}
    lab = first_node(ctx2, "vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(array_from_image_data(lab.GetImageData()), labels)
    np.testing.assert_allclose(affine_lps_from_node(lab), vol.affine, atol=1e-6)
    lines = ctx2.scene.GetNodesByClass("vtkMRMLMarkupsLineNode")
    assert lines.GetNumberOfItems() == 4
    assert AnalysisResult.model_validate_json(seg.GetAttribute("MedImgAI.AIResult")).findings[0].id == "F1"


def _plain_volume_nodes(ctx) -> list:
    n = ctx.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    nodes = [ctx.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode") for i in range(n)]
    return [x for x in nodes if not x.IsA("vtkMRMLLabelMapVolumeNode")]


def test_review_reuses_the_series_already_loaded_instead_of_a_second_copy():
    from MedImgAILib.scene.build import add_source_volume

    vol, labels, result = small_ct()
    vol.source_sop_instance_uids = [f"1.2.826.0.1.3680043.8.498.3.{k}" for k in range(vol.array.shape[0])]
    ctx = new_scene()
    loaded = add_source_volume(ctx, vol, name="as loaded by the DICOM browser")
    nodes = build_result_nodes(ctx, vol, labels, result, specs={"nodule": SPEC})
    assert nodes.volume is loaded
    assert len(_plain_volume_nodes(ctx)) == 1


def test_review_does_not_reuse_a_node_of_another_series_or_grid():
    from MedImgAILib.scene.build import add_source_volume

    vol, labels, result = small_ct()
    uids = [f"1.2.826.0.1.3680043.8.498.3.{k}" for k in range(vol.array.shape[0])]
    vol.source_sop_instance_uids = uids
    ctx = new_scene()
    other = vol.with_array(vol.array.copy())
    other.source_sop_instance_uids = [u + "9" for u in uids]  # another series
    add_source_volume(ctx, other)
    shifted = Volume(array=vol.array, affine=vol.affine.copy(), modality="CT",
                     series_instance_uid=vol.series_instance_uid, source_sop_instance_uids=uids)
    shifted.affine[:3, 3] += 5.0  # same instances but resampled elsewhere: the labels would not fit it
    add_source_volume(ctx, shifted)
    nodes = build_result_nodes(ctx, vol, labels, result, specs={"nodule": SPEC})
    assert len(_plain_volume_nodes(ctx)) == 3
    np.testing.assert_allclose(affine_lps_from_node(nodes.volume), vol.affine)


def test_a_reused_series_keeps_its_place_and_the_result_joins_its_study():
    from MedImgAILib.scene.build import add_source_volume

    vol, labels, result = small_ct()
    vol.source_sop_instance_uids = [f"1.2.826.0.1.3680043.8.498.3.{k}" for k in range(vol.array.shape[0])]
    ctx = new_scene()
    sh = ctx.scene.GetSubjectHierarchyNode()
    loaded = add_source_volume(ctx, vol)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "as the DICOM browser made it"), "CT chest")
    sh.CreateItem(study, loaded)
    nodes = build_result_nodes(ctx, vol, labels, result, specs={"nodule": SPEC})
    assert nodes.study_item == study
    for node in (nodes.volume, nodes.segmentation, nodes.table):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_a_dropped_scene_is_torn_down_at_once_in_order():
    """A scene with an offscreen view is freed as soon as it is dropped (no reference cycle) and torn
    down views-logics-scene: left to the garbage collector in any order, the Colors logic's destructor
    once called into a freed slice logic (an occasional segfault at the test process's exit). Run in
    a fresh interpreter that must also exit cleanly."""
    import os
    import subprocess
    import sys

    from Testing.conftest import REPO

    code = """
import gc, weakref
from Testing.unit.test_scene import small_ct
from MedImgAILib.scene import new_scene, render_slice
from MedImgAILib.scene.build import add_source_volume
refs = []
for _ in range(3):
    ctx = new_scene()
    vol, _labels, _result = small_ct()
    node = add_source_volume(ctx, vol)
    render_slice(ctx, node, size=(64, 64))
    refs.append(weakref.ref(ctx))
    del ctx, node
    assert refs[-1]() is None, "scene context still alive after del: a reference cycle"
with new_scene() as ctx:  # explicit close: idempotent, and the context is spent afterwards
    ctx.close()
assert ctx.scene is None
gc.collect()
print("torn down")
"""
    env = {**os.environ, "VTK_DEFAULT_OPENGL_WINDOW": "vtkEGLRenderWindow", "PYTHONFAULTHANDLER": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0 and "torn down" in r.stdout, r.stderr[-3000:]
