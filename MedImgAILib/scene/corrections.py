"""Slicer nodes -> corrected result: what the radiologist changed, re-measured and re-categorized, plus
one correction record per finding (accepted / rejected / edited / added, with Dice and volume change
against the AI's version).

Reads everything from the scene itself (node attributes and segment tags written by ``build``), so it
works the same on a live scene and on one reloaded from an .mrb file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np
from pydantic import BaseModel, Field

from ..results import AnalysisResult, Finding
from ..volume import Volume
from .build import ATTR_AXIS, ATTR_RESULT, ATTR_ROLE, TAG_FINDING, TAG_STATUS, fill_table, segment_tag
from .context import SceneContext
from .convert import affine_lps_from_node, array_from_image_data, ras_to_lps

#: re-measures one lesion from its corrected mask on the source grid
Remeasure = Callable[[Volume, np.ndarray, Finding], Finding]
#: re-applies the rule sets to a corrected result (finding and study categories)
Recategorize = Callable[[AnalysisResult], AnalysisResult]


class Correction(BaseModel):
    finding_id: str
    action: str  # "accepted" | "rejected" | "edited" | "added" | "unreviewed"
    dice: Optional[float] = None
    ai_volume_mm3: Optional[float] = None
    corrected_volume_mm3: Optional[float] = None
    volume_change_pct: Optional[float] = None
    ai_mean_diameter_mm: Optional[float] = None
    corrected_mean_diameter_mm: Optional[float] = None
    ai_categories: list[str] = Field(default_factory=list)
    corrected_categories: list[str] = Field(default_factory=list)
    what_changed: list[str] = Field(default_factory=list)  # "segmentation", "long axis line", ...
    observer: str = ""
    recorded_at: str = ""


class CorrectedResult(BaseModel):
    result: AnalysisResult
    corrections: list[Correction]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _nodes_with_attribute(scene: Any, cls: str, attr: str) -> list[Any]:
    nodes = scene.GetNodesByClass(cls)
    out = []
    for i in range(nodes.GetNumberOfItems()):
        n = nodes.GetItemAsObject(i)
        if n.GetAttribute(attr) is not None:
            out.append(n)
    return out


def _segment_mask(ctx: SceneContext, seg_node: Any, segment_id: str, reference: Any) -> np.ndarray:
    import vtk

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    lab = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tmp-export")
    try:
        if not ctx.segmentations.ExportSegmentsToLabelmapNode(seg_node, ids, lab, reference):
            raise RuntimeError(f"could not export segment {segment_id}")
        return array_from_image_data(lab.GetImageData()) > 0
    finally:
        ctx.scene.RemoveNode(lab)


def _line_ends_lps(node: Any) -> list[list[float]]:
    pts = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        pts.append([float(x) for x in ras_to_lps(p)])
    return pts


def _moved(a: list[list[float]], b: list[list[float]], tol_mm: float = 0.01) -> bool:
    if len(a) != len(b):
        return True
    return bool(np.abs(np.asarray(a) - np.asarray(b)).max() > tol_mm) if a else False


def read_corrections(
    ctx: SceneContext,
    volume: Volume,
    remeasure: Remeasure,
    recategorize: Optional[Recategorize] = None,
    observer: str = "",
) -> CorrectedResult:
    """Compare the scene's current segments and lines with the AI's version stored in it."""
    scene = ctx.scene
    segs = _nodes_with_attribute(scene, "vtkMRMLSegmentationNode", ATTR_RESULT)
    if not segs:
        raise LookupError("the scene holds no MedImgAI result (no segmentation with the AI result attached)")
    seg_node = segs[0]
    original = AnalysisResult.model_validate(json.loads(seg_node.GetAttribute(ATTR_RESULT)))
    ai_nodes = _nodes_with_attribute(scene, "vtkMRMLLabelMapVolumeNode", ATTR_ROLE)
    ai_labels = array_from_image_data(ai_nodes[0].GetImageData())
    if not np.allclose(affine_lps_from_node(ai_nodes[0]), volume.affine, atol=1e-4) or ai_labels.shape != volume.array.shape:
        raise ValueError("the volume given is not the grid the AI result was built on")
    reference = ai_nodes[0]

    segmentation = seg_node.GetSegmentation()
    by_finding: dict[str, str] = {}
    untagged: list[str] = []
    for sid in segmentation.GetSegmentIDs():
        fid = segment_tag(segmentation.GetSegment(sid), TAG_FINDING)
        if fid:
            by_finding[fid] = sid
        else:
            untagged.append(sid)
    lines: dict[str, dict[str, Any]] = {}
    for node in _nodes_with_attribute(scene, "vtkMRMLMarkupsLineNode", TAG_FINDING):
        lines.setdefault(node.GetAttribute(TAG_FINDING), {})[node.GetAttribute(ATTR_AXIS)] = node

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    corrected: list[Finding] = []
    records: list[Correction] = []
    for f in original.findings:
        rec = Correction(
            finding_id=f.id,
            action="unreviewed",
            ai_volume_mm3=f.volume_mm3,
            ai_mean_diameter_mm=f.mean_diameter_mm,
            ai_categories=[f"{c.system} {c.value}" for c in f.categories],
            observer=observer,
            recorded_at=now,
        )
        sid = by_finding.get(f.id)
        status = (segment_tag(segmentation.GetSegment(sid), TAG_STATUS) if sid is not None else None) or ""
        long_node = lines.get(f.id, {}).get("long")
        if sid is None or status == "rejected" or (f.long_axis_lps_mm and long_node is None):
            rec.action = "rejected"
            rec.what_changed.append("segment deleted" if sid is None else ("marked rejected" if status == "rejected" else "long axis line deleted"))
            records.append(rec)
            continue
        ai_mask = ai_labels == f.instance_value
        mask = _segment_mask(ctx, seg_node, sid, reference)
        new = f.model_copy(deep=True)
        if not np.array_equal(mask, ai_mask):
            rec.what_changed.append("segmentation")
            rec.dice = dice(mask, ai_mask)
            new = remeasure(volume, mask, new)
        for axis in ("long", "short"):
            node = lines.get(f.id, {}).get(axis)
            ai_ends = f.long_axis_lps_mm if axis == "long" else f.short_axis_lps_mm
            # a line the reader moved differs from the AI's axis and, after a segment edit, also from
            # the re-measured axis (the review session puts lines there after re-measuring)
            refs = [ai_ends]
            if "segmentation" in rec.what_changed:
                refs.append(new.long_axis_lps_mm if axis == "long" else new.short_axis_lps_mm)
            if node is not None and all(_moved(_line_ends_lps(node), r) for r in refs):
                ends = _line_ends_lps(node)
                length = float(np.linalg.norm(np.subtract(ends[1], ends[0])))
                if axis == "long":
                    new.long_axis_mm, new.long_axis_lps_mm = length, ends
                else:
                    new.short_axis_mm, new.short_axis_lps_mm = length, ends
                rec.what_changed.append(f"{axis} axis line")
        if "long axis line" in rec.what_changed or "short axis line" in rec.what_changed:
            if new.long_axis_mm is not None and new.short_axis_mm is not None:
                new.mean_diameter_mm = (new.long_axis_mm + new.short_axis_mm) / 2.0
        rec.action = "edited" if rec.what_changed else ("accepted" if status == "accepted" else "unreviewed")
        new.status = rec.action if rec.action != "unreviewed" else f.status
        rec.corrected_volume_mm3 = new.volume_mm3
        rec.corrected_mean_diameter_mm = new.mean_diameter_mm
        if f.volume_mm3 and new.volume_mm3 is not None:
            rec.volume_change_pct = 100.0 * (new.volume_mm3 - f.volume_mm3) / f.volume_mm3
        corrected.append(new)
        records.append(rec)

    for n, sid in enumerate(untagged, start=1):
        fid = f"R{n}"
        mask = _segment_mask(ctx, seg_node, sid, reference)
        if not mask.any():
            continue
        label = original.findings[0].label if original.findings else "lesion"
        new = remeasure(volume, mask, Finding(id=fid, label=label, status="added"))
        new.status = "added"
        corrected.append(new)
        records.append(
            Correction(finding_id=fid, action="added", corrected_volume_mm3=new.volume_mm3,
                       corrected_mean_diameter_mm=new.mean_diameter_mm, what_changed=["segment added"],
                       observer=observer, recorded_at=now)
        )

    result = original.model_copy(deep=True)
    result.findings = corrected
    if observer:
        result.context = {**result.context, "observer": observer}
    if recategorize is not None:
        result = recategorize(result)
        corrected = result.findings
    cats = {f.id: [f"{c.system} {c.value}" for c in f.categories] for f in corrected}
    for rec in records:
        rec.corrected_categories = cats.get(rec.finding_id, [])
    tables = scene.GetNodesByClass("vtkMRMLTableNode")
    for i in range(tables.GetNumberOfItems()):
        t = tables.GetItemAsObject(i)
        if t.GetName() == "AI findings table":
            fill_table(t, corrected)
    return CorrectedResult(result=result, corrections=records)
