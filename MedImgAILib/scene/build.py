"""AnalysisResult -> Slicer nodes: source volume, segmentation (one segment per finding, with terminology
and the DICOM algorithm tags Slicer's SEG export reads), long/short axis lines, a findings table, all
under the study in the subject hierarchy.

The label map given here is an *instance* map on the source grid: finding ``f`` occupies the voxels equal
to ``f.instance_value``. The AI's own version is kept in the scene (a hidden label-map node and the result
JSON as a node attribute) so that corrections can be measured against it after a save and reload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..results import AnalysisResult, Code, Finding
from ..volume import Volume
from .context import SceneContext
from .convert import affine_lps_from_node, image_data_from_array, ijk_to_ras_matrix, lps_to_ras

ATTR_RESULT = "MedImgAI.AIResult"
ATTR_ROLE = "MedImgAI.Role"
TAG_FINDING = "MedImgAI.FindingID"
TAG_STATUS = "MedImgAI.Status"
ATTR_AXIS = "MedImgAI.Axis"

# SNOMED CT defaults for a lesion when the model card gives nothing more specific
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code(value="49755003", scheme="SCT", meaning="Morphologically Altered Structure")
NODULE = Code(value="27925004", scheme="SCT", meaning="Nodule")


@dataclass
class SegmentSpec:
    """How one finding appears as a segment (codes from the model card's label definition)."""

    category: Code = field(default_factory=lambda: MORPHOLOGICALLY_ALTERED_STRUCTURE)
    type: Code = field(default_factory=lambda: NODULE)
    region: Optional[Code] = None
    color: tuple[float, float, float] = (0.9, 0.3, 0.1)


@dataclass
class ResultNodes:
    volume: Any
    segmentation: Any
    ai_labelmap: Any
    table: Any
    lines: dict[str, dict[str, Any]]  # finding id -> {"long": node, "short": node}
    segment_ids: dict[str, str]  # finding id -> segment id
    study_item: int


def segment_tag(segment: Any, name: str) -> Optional[str]:
    """A segment's tag value, or None when the tag is absent."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def _code_str(code: Optional[Code]) -> str:
    return f"{code.scheme}^{code.value}^{code.meaning}" if code else "^^"


def terminology_entry(spec: SegmentSpec) -> str:
    """Slicer's serialized terminology entry (context~category~type~type modifier~anatomic context~
    region~region modifier), which its DICOM SEG exporter turns into the segment's codes."""
    return "~".join(
        [
            "Segmentation category and type - DICOM master list",
            _code_str(spec.category),
            _code_str(spec.type),
            "^^",
            "Anatomic codes - DICOM master list",
            _code_str(spec.region),
            "^^",
        ]
    )


def _add_volume_node(ctx: SceneContext, volume: Volume, name: str, cls: str) -> Any:
    node = ctx.scene.AddNewNodeByClass(cls, name)
    node.SetAndObserveImageData(image_data_from_array(volume.array))
    node.SetIJKToRASMatrix(ijk_to_ras_matrix(volume.affine))
    return node


def add_source_volume(ctx: SceneContext, volume: Volume, name: str = "CT") -> Any:
    node = _add_volume_node(ctx, volume, name, "vtkMRMLScalarVolumeNode")
    node.CreateDefaultDisplayNodes()
    disp = node.GetDisplayNode()
    if volume.modality == "CT":
        disp.SetAutoWindowLevel(False)
        disp.SetWindowLevel(1500.0, -600.0)  # lung window: where the findings of this product live
    if volume.series_instance_uid:
        node.SetAttribute("DICOM.instanceUIDs", " ".join(volume.source_sop_instance_uids))
    return node


def _line(ctx: SceneContext, name: str, finding_id: str, axis: str, ends_lps: list[list[float]], color) -> Any:
    node = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
    node.CreateDefaultDisplayNodes()
    for p in ends_lps:
        r = lps_to_ras(p)
        node.AddControlPointWorld(float(r[0]), float(r[1]), float(r[2]))
    node.SetAttribute(TAG_FINDING, finding_id)
    node.SetAttribute(ATTR_AXIS, axis)
    node.GetDisplayNode().SetSelectedColor(*color)
    if axis == "short":  # one measurement label per finding keeps the view readable
        node.GetDisplayNode().SetPropertiesLabelVisibility(False)
    node.SetLocked(False)
    return node


TABLE_COLUMNS = [
    ("Finding", "id"),
    ("Label", "label"),
    ("Type", "type"),
    ("Long axis (mm)", "long_axis_mm"),
    ("Short axis (mm)", "short_axis_mm"),
    ("Mean diameter (mm)", "mean_diameter_mm"),
    ("Volume (mm3)", "volume_mm3"),
    ("Mean HU", "mean_hu"),
    ("Categories", None),
    ("Recommendation", None),
    ("Status", "status"),
]


def _cell(f: Finding, attr: Optional[str], col: str) -> str:
    if attr is not None:
        v = getattr(f, attr)
        if v is None:
            return ""
        return f"{v:.1f}" if isinstance(v, float) else str(v)
    if col == "Categories":
        return "; ".join(f"{c.system} {c.value}" for c in f.categories)
    return " | ".join(c.recommendation for c in f.categories if c.recommendation)


def fill_table(table: Any, findings: list[Finding]) -> None:
    import vtk

    t = table.GetTable()
    t.Initialize()
    for col, _ in TABLE_COLUMNS:
        arr = vtk.vtkStringArray()
        arr.SetName(col)
        t.AddColumn(arr)
    for f in findings:
        row = t.InsertNextBlankRow()
        for c, (col, attr) in enumerate(TABLE_COLUMNS):
            t.SetValue(row, c, vtk.vtkVariant(_cell(f, attr, col)))
    table.Modified()


def find_source_volume_node(ctx: SceneContext, volume: Volume) -> Any:
    """The scalar volume node already in the scene that holds exactly ``volume``'s series on its grid, or
    None. Identity is the DICOM instance list Slicer's DICOM loader records on the node (or that
    ``add_source_volume`` sets); the grid must match too, since the label map is drawn on it."""
    if not volume.source_sop_instance_uids:
        return None
    # a set: Slicer's DICOM plugin records the instances in its own file order, which need not be ours
    wanted = set(volume.source_sop_instance_uids)
    for i in range(ctx.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = ctx.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if node.IsA("vtkMRMLLabelMapVolumeNode") or set((node.GetAttribute("DICOM.instanceUIDs") or "").split()) != wanted:
            continue
        image = node.GetImageData()
        if image is None or tuple(reversed(image.GetDimensions())) != volume.array.shape:
            continue
        if np.allclose(affine_lps_from_node(node), volume.affine, atol=1e-3):
            return node
    return None


def build_result_nodes(
    ctx: SceneContext,
    volume: Volume,
    instance_labels: np.ndarray,
    result: AnalysisResult,
    specs: Optional[dict[str, SegmentSpec]] = None,
    study_name: str = "Study",
    patient_name: str = "Patient",
) -> ResultNodes:
    """Create every node for ``result`` on the grid of ``volume``; ``specs`` maps a finding label to
    its segment codes and colour."""
    if instance_labels.shape != volume.array.shape:
        raise ValueError(f"label map shape {instance_labels.shape} does not match volume {volume.array.shape}")
    specs = specs or {}
    scene = ctx.scene
    # created first, so that the subject hierarchy logic gives every node below an item as it is added
    sh = scene.GetSubjectHierarchyNode()
    # The radiologist usually analysed a series already loaded in Slicer: review on that node rather than a
    # second copy, which would leave two identical volumes in the data tree and double the memory.
    vol_node = find_source_volume_node(ctx, volume)
    reused = vol_node is not None
    if vol_node is None:
        vol_node = add_source_volume(ctx, volume, name=f"{volume.modality or 'Image'} {volume.series_instance_uid[-8:]}".strip())

    ai_lab = _add_volume_node(ctx, volume.with_array(instance_labels.astype(np.int16)), "AI label map (as produced)", "vtkMRMLLabelMapVolumeNode")
    ai_lab.SetAttribute(ATTR_ROLE, "ai-instance-labels")
    ai_lab.SetHideFromEditors(True)

    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "AI findings")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol_node)
    seg.SetAttribute(ATTR_RESULT, json.dumps(result.to_json()))
    segmentation = seg.GetSegmentation()
    segment_ids: dict[str, str] = {}
    for f in result.findings:
        mask = (instance_labels == f.instance_value).astype(np.uint8)
        if not mask.any():
            continue
        tmp = _add_volume_node(ctx, volume.with_array(mask), "tmp", "vtkMRMLLabelMapVolumeNode")
        before = set(segmentation.GetSegmentIDs())
        ctx.segmentations.ImportLabelmapToSegmentationNode(tmp, seg)
        scene.RemoveNode(tmp)
        new_id = next(s for s in segmentation.GetSegmentIDs() if s not in before)
        segment = segmentation.GetSegment(new_id)
        spec = specs.get(f.label, SegmentSpec())
        segment.SetName(f"{f.id} {f.label}")
        segment.SetColor(*spec.color)
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_entry(spec))
        segment.SetTag("DICOM.SegmentAlgorithmType", "AUTOMATIC")
        segment.SetTag("DICOM.SegmentAlgorithmName", f"{result.model.id} {result.model.version}" if result.model else "MedImgAI")
        segment.SetTag(TAG_FINDING, f.id)
        segment.SetTag(TAG_STATUS, f.status)
        segment_ids[f.id] = new_id

    lines: dict[str, dict[str, Any]] = {}
    for f in result.findings:
        entry: dict[str, Any] = {}
        if len(f.long_axis_lps_mm) == 2:
            entry["long"] = _line(ctx, f"{f.id} long axis", f.id, "long", f.long_axis_lps_mm, (1.0, 0.8, 0.1))
        if len(f.short_axis_lps_mm) == 2:
            entry["short"] = _line(ctx, f"{f.id} short axis", f.id, "short", f.short_axis_lps_mm, (0.2, 0.8, 1.0))
        lines[f.id] = entry

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "AI findings table")
    fill_table(table, result.findings)

    # a reused series stays where the DICOM browser put it, and the result joins its study there
    existing_parent = sh.GetItemParent(sh.GetItemByDataNode(vol_node)) if reused and sh.GetItemByDataNode(vol_node) else 0
    if existing_parent and existing_parent != sh.GetSceneItemID():
        study_item = existing_parent
    else:
        patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient_name)
        study_item = sh.CreateStudyItem(patient_item, study_name)
        if result.study_instance_uid:
            sh.SetItemUID(study_item, "DICOM", result.study_instance_uid)
    for node in [vol_node, ai_lab, seg, table, *[n for e in lines.values() for n in e.values()]]:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, study_item)
        else:  # headless: no subject hierarchy plugins add items for us
            sh.CreateItem(study_item, node)
    if volume.series_instance_uid:
        sh.SetItemUID(sh.GetItemByDataNode(vol_node), "DICOM", volume.series_instance_uid)
    return ResultNodes(
        volume=vol_node,
        segmentation=seg,
        ai_labelmap=ai_lab,
        table=table,
        lines=lines,
        segment_ids=segment_ids,
        study_item=study_item,
    )
