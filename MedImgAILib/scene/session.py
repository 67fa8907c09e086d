"""ReviewSession: the logic behind the Review and Export panels, usable without Qt.

    session = ReviewSession.open("out/")            # findings.json + instance map + the source series
    session.reject("F2"); session.accept("F1")      # segment tags, as the panel's buttons set them
    ...                                             # the radiologist edits segments / moves lines in Slicer
    corrected = session.remeasure(observer="Doe^Jane")   # real measurements, real rule sets
    session.record(ResultStore("results.db"))       # corrections into the tracking store
    session.export("final/", observer="Doe^Jane", send_to="pacs")   # SEG + SR (+ key images)

Everything the session knows lives in the scene (node attributes and segment tags written by
``build``), so a session can be rebuilt from a scene reloaded from an .mrb bundle.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import MedImgAIError
from ..results import AnalysisResult, Code, Finding
from ..volume import Volume
from .build import TAG_FINDING, TAG_STATUS, TABLE_COLUMNS, ResultNodes, SegmentSpec, _cell, build_result_nodes, fill_table, segment_tag
from .context import SceneContext, new_scene
from .convert import lps_to_ras
from .corrections import CorrectedResult, _segment_mask, read_corrections

log = logging.getLogger(__name__)

STATUSES = ("ai", "accepted", "rejected")
#: SNOMED CT "Lung": findings of a model for this region are measured as lung lesions
LUNG_REGION = "39607008"


class ReviewError(MedImgAIError):
    """A review session cannot be opened, corrected or exported as asked."""

    kind = "review"


# --------------------------------------------------------------------------------------------------
# Loading an analysis output folder
# --------------------------------------------------------------------------------------------------


def _resolve(base: Path, p: Optional[str]) -> Optional[Path]:
    if not p:
        return None
    path = Path(p)
    return path if path.is_absolute() else base / path


def load_source_volume(source: str | os.PathLike[str], series_uid: str = "") -> Volume:
    """The analysed series as a Volume: the library's DICOM loader when present, SimpleITK otherwise."""
    try:
        from ..dicom import load_volume  # type: ignore[attr-defined]
    except ImportError:
        return _load_with_sitk(Path(source), series_uid)
    return load_volume(source, series_uid or None)


def _load_with_sitk(folder: Path, series_uid: str) -> Volume:
    import pydicom
    import SimpleITK as sitk

    if not folder.is_dir():
        raise ReviewError(f"source series folder {folder} does not exist")
    ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
    if series_uid and series_uid not in ids:
        raise ReviewError(f"series {series_uid} is not in {folder} (found {len(ids)} series)")
    if not ids:
        raise ReviewError(f"no DICOM image series in {folder}")
    if not series_uid and len(ids) > 1:
        raise ReviewError(f"{folder} holds {len(ids)} series; give the SeriesInstanceUID")
    uid = series_uid or ids[0]
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    image = sitk.ReadImage(files)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID) for f in files]
    return Volume.from_sitk(
        image,
        series_instance_uid=uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
        source_sop_instance_uids=sops,
        source_frame_numbers=[1] * len(sops),
        source_sop_class_uid=str(first.get("SOPClassUID", "")),
    )


def series_files(folder: str | os.PathLike[str], series_uid: str) -> list[Path]:
    """The files of one series under ``folder`` (headers only): the sources SEG/SR reference."""
    import pydicom

    out = []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - anything unreadable is not one of the series' files
            continue
        if str(ds.get("SeriesInstanceUID", "")) == series_uid:
            out.append(p)
    return out


def find_card(model_id: str) -> Any:
    """The model card of ``model_id``, or None when the model registry is not available or lacks it
    (the session then uses generic lesion codes)."""
    if not model_id:
        return None
    try:
        from ..models import get_card  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return get_card(model_id)
    except MedImgAIError as exc:
        log.warning("model card %s not found (%s): generic segment codes are used", model_id, exc)
        return None


def _code(spec: Any) -> Optional[Code]:
    return Code(value=spec.value, scheme=spec.scheme, meaning=spec.meaning) if spec is not None else None


def segment_specs(card: Any) -> dict[str, SegmentSpec]:
    """Finding label -> segment codes and colour from a model card's labels."""
    if card is None:
        return {}
    return {
        lab.name: SegmentSpec(
            category=_code(lab.category),
            type=_code(lab.type),
            region=_code(lab.anatomic_region),
            color=tuple(c / 255.0 for c in lab.color_rgb),
        )
        for lab in card.labels
    }


def finding_label_specs(card: Any) -> list[Any]:
    """The findings stage's LabelSpecs for a card (codes for re-measured and added findings). No size
    floor: a lesion the radiologist drew is reported whatever its size."""
    if card is None:
        return []
    from ..findings import LabelSpec

    lung = getattr(getattr(card, "body_region", None), "value", "") == LUNG_REGION
    return [
        LabelSpec(value=lab.value, name=lab.name, finding_code=_code(lab.type), category_code=_code(lab.category),
                  site_code=None, min_size_mm3=0.0, is_lung_lesion=lung)
        for lab in card.labels
    ]


# --------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------


@dataclass
class ExportOutcome:
    out_dir: Path
    seg: Optional[Path]
    sr: Path
    key_images: list[Path] = field(default_factory=list)
    findings_json: Optional[Path] = None
    #: C-STORE outcome (``StoreResult.as_json()``) when sent to a PACS node
    sent: Optional[dict[str, Any]] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [p for p in [self.seg, self.sr, *self.key_images] if p is not None]


class ReviewSession:
    """One analysed series in a scene: its nodes, the radiologist's verdicts and edits, the corrected
    result and its export. ``ctx`` is a headless scene (default) or ``SceneContext.from_slicer_app()``."""

    def __init__(
        self,
        volume: Volume,
        instance_labels: np.ndarray,
        result: AnalysisResult,
        *,
        ctx: Optional[SceneContext] = None,
        card: Any = None,
        sources: Sequence[str | os.PathLike[str]] = (),
        analysis_dir: Optional[Path] = None,
        study_name: str = "Study",
        patient_name: str = "Patient",
        rule_sets: Optional[Sequence[str]] = None,
        nodes: Optional[ResultNodes] = None,
    ) -> None:
        if instance_labels.shape != volume.array.shape:
            raise ReviewError(
                f"instance map shape {instance_labels.shape} does not match series "
                f"{volume.series_instance_uid or '?'} shape {volume.array.shape}"
            )
        self.ctx = ctx or new_scene()
        self.volume = volume
        self.instance_labels = instance_labels
        self.result = result
        self.card = card if card is not None else find_card(result.model.id if result.model else "")
        self.sources = [Path(s) for s in sources]
        self.analysis_dir = analysis_dir
        self._rule_sets = list(rule_sets) if rule_sets is not None else None
        self.nodes: ResultNodes = nodes or build_result_nodes(
            self.ctx, volume, instance_labels, result, specs=segment_specs(self.card),
            study_name=study_name, patient_name=patient_name,
        )
        disp = self.nodes.segmentation.GetDisplayNode()
        if disp is not None:  # the reader must see the lesion's texture (solid core, ground glass) through it
            disp.SetOpacity2DFill(0.3)
            disp.SetOpacity2DOutline(1.0)
        self.corrected: Optional[CorrectedResult] = None
        self._observer = ""  # the reviewer, once named
        #: the tracking store's id of this result, once recorded (or when opened from the worklist)
        self.result_id: Optional[int] = None

    # --- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, analysis_dir: str | os.PathLike[str], *, ctx: Optional[SceneContext] = None, card: Any = None,
             volume: Optional[Volume] = None, **kw: Any) -> "ReviewSession":
        """From a ``medimgai analyze`` output folder: findings.json, its instance map (NIfTI) and the
        source series it names (``outputs.source_dir``; or ``volume`` when already loaded)."""
        import nibabel as nib

        base = Path(analysis_dir)
        fj = base / "findings.json"
        if not fj.is_file():
            raise ReviewError(f"{base} holds no findings.json: not a medimgai analyze output folder")
        result = AnalysisResult.read(fj)
        imap = _resolve(base, result.outputs.instance_map)
        if imap is None or not imap.is_file():
            raise ReviewError(f"{fj}: outputs.instance_map is {'missing' if imap is None else f'{imap}, which does not exist'}; "
                              "re-run the analysis with this version")
        src = _resolve(base, result.outputs.source_dir)
        if volume is None:
            if src is None:
                raise ReviewError(f"{fj}: outputs.source_dir is missing, so the analysed series cannot be found")
            volume = load_source_volume(src, result.series_instance_uid)
        labels = Volume.from_nifti(nib.load(str(imap)))
        if labels.array.shape != volume.array.shape or not np.allclose(labels.affine, volume.affine, atol=1e-3):
            raise ReviewError(
                f"instance map {imap.name} (shape {labels.array.shape}) is not on the grid of series "
                f"{volume.series_instance_uid or '?'} (shape {volume.array.shape})"
            )
        sources = kw.pop("sources", None)
        if sources is None and src is not None and src.is_dir() and volume.series_instance_uid:
            sources = series_files(src, volume.series_instance_uid)
        return cls(volume, np.asarray(labels.array).astype(np.int32), result, ctx=ctx, card=card,
                   sources=sources or (), analysis_dir=base, **kw)

    @classmethod
    def from_scene(cls, ctx: SceneContext, *, volume: Optional[Volume] = None, card: Any = None,
                   sources: Sequence[str | os.PathLike[str]] = (), **kw: Any) -> "ReviewSession":
        """The session of a scene that already holds a MedImgAI result (a review saved as .mrb and
        reloaded, or a scene the module built earlier): nodes found by their MedImgAI attributes and
        tags, edits and verdicts kept. Without ``volume`` the source volume is read from its node
        (pixels, geometry and the source instance UIDs recorded on it)."""
        from .build import ATTR_AXIS, ATTR_RESULT, ATTR_ROLE
        from .convert import affine_lps_from_node, array_from_image_data

        def nodes_of(cls_name: str) -> list[Any]:
            col = ctx.scene.GetNodesByClass(cls_name)
            return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]

        segs = [n for n in nodes_of("vtkMRMLSegmentationNode") if n.GetAttribute(ATTR_RESULT)]
        labs = [n for n in nodes_of("vtkMRMLLabelMapVolumeNode") if n.GetAttribute(ATTR_ROLE) == "ai-instance-labels"]
        if not segs or not labs:
            raise ReviewError("the scene holds no MedImgAI result (no segmentation with the AI result attached)")
        seg, lab = segs[0], labs[0]
        result = AnalysisResult.model_validate_json(seg.GetAttribute(ATTR_RESULT))
        instance = array_from_image_data(lab.GetImageData()).astype(np.int32)
        vols = [n for n in nodes_of("vtkMRMLScalarVolumeNode") if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        vol_node = next((n for n in vols if n.GetAttribute("DICOM.instanceUIDs")), vols[0] if vols else None)
        if vol_node is None:
            raise ReviewError("the scene holds the MedImgAI result but not its source volume")
        if volume is None:
            uids = (vol_node.GetAttribute("DICOM.instanceUIDs") or "").split()
            volume = Volume(array=array_from_image_data(vol_node.GetImageData()), affine=affine_lps_from_node(vol_node),
                            series_instance_uid=result.series_instance_uid, study_instance_uid=result.study_instance_uid,
                            source_sop_instance_uids=uids, source_frame_numbers=[1] * len(uids))
        segmentation = seg.GetSegmentation()
        segment_ids = {}
        for sid in segmentation.GetSegmentIDs():
            fid = segment_tag(segmentation.GetSegment(sid), TAG_FINDING)
            if fid:
                segment_ids[fid] = sid
        lines: dict[str, dict[str, Any]] = {}
        for n in nodes_of("vtkMRMLMarkupsLineNode"):
            if n.GetAttribute(TAG_FINDING):
                lines.setdefault(n.GetAttribute(TAG_FINDING), {})[n.GetAttribute(ATTR_AXIS)] = n
        tables = [n for n in nodes_of("vtkMRMLTableNode") if n.GetName() == "AI findings table"]
        sh = ctx.scene.GetSubjectHierarchyNode()
        nodes = ResultNodes(volume=vol_node, segmentation=seg, ai_labelmap=lab,
                            table=tables[0] if tables else ctx.scene.AddNewNodeByClass("vtkMRMLTableNode", "AI findings table"),
                            lines=lines, segment_ids=segment_ids,
                            study_item=sh.GetItemParent(sh.GetItemByDataNode(seg)) if sh else 0)
        return cls(volume, instance, result, ctx=ctx, card=card, sources=sources, nodes=nodes, **kw)

    # --- what the panel shows -----------------------------------------------------------------------
    @property
    def findings(self) -> list[Finding]:
        """The AI's findings with the current verdicts (or the corrected ones after ``remeasure``)."""
        if self.corrected is not None:
            by_id = {f.id: f for f in self.corrected.result.findings}
            rejected = [f.model_copy(update={"status": "rejected"}) for f in self.result.findings if f.id not in by_id]
            return [*self.corrected.result.findings, *rejected]
        out = []
        for f in self.result.findings:
            status = self.status(f.id)
            out.append(f.model_copy(update={"status": status}) if status else f)
        return out

    def finding(self, finding_id: str) -> Finding:
        for f in self.findings:
            if f.id == finding_id:
                return f
        raise ReviewError(f"no finding {finding_id} in this result")

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the findings table (the same columns as the scene's table node)."""
        return [c for c, _ in TABLE_COLUMNS], [[_cell(f, attr, col) for col, attr in TABLE_COLUMNS] for f in self.findings]

    def study_category_text(self) -> str:
        cats = (self.corrected.result if self.corrected else self.result).study_categories
        return "; ".join(f"{c.system} {c.value}" + (f": {c.recommendation}" if c.recommendation else "") for c in cats)

    def center_lps(self, finding_id: str) -> np.ndarray:
        """Where "Jump to" goes: the middle of the long axis (the slice the finding was measured on,
        so its lines are in view), else the finding's centroid."""
        f = self.finding(finding_id)
        if len(f.long_axis_lps_mm) == 2:
            return np.mean(np.asarray(f.long_axis_lps_mm, dtype=float), axis=0)
        if not f.center_lps_mm:
            raise ReviewError(f"finding {finding_id} has no centre")
        return np.asarray(f.center_lps_mm, dtype=float)

    def center_ras(self, finding_id: str) -> np.ndarray:
        """``center_lps`` in RAS, the scene's frame (what the slice views are moved to)."""
        return lps_to_ras(self.center_lps(finding_id))

    def render_finding(self, finding_id: str, size: tuple[int, int] = (512, 512), field_of_view_mm: Optional[float] = None):
        """An axial slice through the finding's centre with the overlays (headless "Jump to")."""
        from .render import render_slice

        return render_slice(self.ctx, self.nodes.volume, center_lps=self.center_lps(finding_id),
                            size=size, field_of_view_mm=field_of_view_mm)

    # --- verdicts -----------------------------------------------------------------------------------
    def _segment_id(self, finding_id: str) -> Optional[str]:
        segmentation = self.nodes.segmentation.GetSegmentation()
        for sid in segmentation.GetSegmentIDs():
            if segment_tag(segmentation.GetSegment(sid), TAG_FINDING) == finding_id:
                return sid
        return None

    def status(self, finding_id: str) -> str:
        sid = self._segment_id(finding_id)
        if sid is None:
            return "rejected"  # the segment was deleted
        return segment_tag(self.nodes.segmentation.GetSegmentation().GetSegment(sid), TAG_STATUS) or "ai"

    def set_status(self, finding_id: str, status: str) -> None:
        if status not in STATUSES:
            raise ReviewError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        sid = self._segment_id(finding_id)
        if sid is None:
            raise ReviewError(f"finding {finding_id} has no segment any more (deleted): it counts as rejected")
        self.nodes.segmentation.GetSegmentation().GetSegment(sid).SetTag(TAG_STATUS, status)
        # a rejected finding disappears from the views; its row stays in the table, marked
        visible = status != "rejected"
        disp = self.nodes.segmentation.GetDisplayNode()
        if disp is not None:
            disp.SetSegmentVisibility(sid, visible)
        for line in self.nodes.lines.get(finding_id, {}).values():
            if line.GetScene() is not None and line.GetDisplayNode() is not None:
                line.GetDisplayNode().SetVisibility(visible)
        if self.corrected is not None:  # keep the corrected measurements, with this verdict in them
            self.remeasure(self._observer)
        else:
            fill_table(self.nodes.table, self.findings)

    def accept(self, finding_id: str) -> None:
        self.set_status(finding_id, "accepted")

    def reject(self, finding_id: str) -> None:
        self.set_status(finding_id, "rejected")

    # --- re-measure and re-categorize ---------------------------------------------------------------
    def _label_spec(self, f: Finding) -> Any:
        from ..findings import LabelSpec

        for s in finding_label_specs(self.card):
            if s.value == f.label_value or s.name == f.label:
                return s
        # no model card: a lesion is a lung lesion when the AI's findings of this result were (typed, sided)
        lung = any(g.type or g.side for g in [f, *self.result.findings])
        kw = {"finding_code": f.finding_code} if f.finding_code else {}
        return LabelSpec(value=f.label_value, name=f.label, min_size_mm3=0.0, is_lung_lesion=lung, **kw)

    def remeasure_mask(self, volume: Volume, mask: np.ndarray, finding: Finding) -> Finding:
        """The findings stage's measurements of one corrected mask; identity, status and prior kept."""
        from ..findings.extract import measure_component

        if not mask.any():
            return finding.model_copy(update={"volume_mm3": 0.0, "long_axis_mm": None, "short_axis_mm": None,
                                              "mean_diameter_mm": None, "max_3d_diameter_mm": None,
                                              "long_axis_lps_mm": [], "short_axis_lps_mm": []})
        ks, js, is_ = (np.nonzero(mask.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1)))
        margin = 3  # as the findings stage crops: room for the partial-volume ring around the mask
        bb = tuple(slice(max(0, int(a[0]) - margin), min(n, int(a[-1]) + 1 + margin))
                   for a, n in zip((ks, js, is_), mask.shape))
        m = measure_component(mask[bb], bb, volume, volume, None, self._label_spec(finding))  # type: ignore[arg-type]
        keep = {"id": finding.id, "label": finding.label, "label_value": finding.label_value,
                "instance_value": finding.instance_value, "status": finding.status,
                "tracking_uid": finding.tracking_uid, "prior": finding.prior, "probability": finding.probability,
                "location": finding.location or m.location}
        return m.model_copy(update=keep)

    def rule_sets(self, result: AnalysisResult) -> list[tuple[str, Optional[str]]]:
        """The rule sets to re-apply: those that categorized the AI result, else every rule set that
        judges one of the findings' labels."""
        if self._rule_sets is not None:
            return [(r.split("@")[0], r.split("@")[1] if "@" in r else None) for r in self._rule_sets]
        if result.rules:
            return [(r.id, r.version) for r in result.rules]
        from ..rules import list_rule_sets

        labels = {f.label.lower() for f in result.findings}
        return [(rs.id, rs.version) for rs in list_rule_sets()
                if labels & {x.lower() for x in rs.applicability.finding_labels}]

    def recategorize(self, result: AnalysisResult) -> AnalysisResult:
        """The real rule sets on the corrected findings, with the clinical context the AI run used."""
        from ..rules import RuleContext, evaluate, load_rule_set, make_context

        fields = {k: v for k, v in result.context.items() if k in RuleContext.model_fields}
        context = make_context(**fields)
        for rs_id, version in self.rule_sets(result):
            ev = evaluate(result.findings, context, load_rule_set(rs_id, version))
            result = ev.apply_to(result)
        return result

    def remeasure(self, observer: str = "") -> CorrectedResult:
        """Compare the scene with the AI's version: re-measure edited segments and moved lines,
        re-apply the rules, one correction record per finding. Updates the scene's table."""
        self._observer = observer or self._observer
        self.corrected = read_corrections(self.ctx, self.volume, self.remeasure_mask, self.recategorize,
                                          observer=self._observer)
        self._sync_lines(self.corrected)
        fill_table(self.nodes.table, self.findings)
        return self.corrected

    def _sync_lines(self, corrected: CorrectedResult) -> None:
        """After a segment edit the diameter lines show the re-measured axes (a line the reader moved
        stays where they put it: the corrected finding already carries its ends)."""
        edited = {c.finding_id for c in corrected.corrections if "segmentation" in c.what_changed}
        for f in corrected.result.findings:
            if f.id not in edited:
                continue
            for axis, ends in (("long", f.long_axis_lps_mm), ("short", f.short_axis_lps_mm)):
                node = self.nodes.lines.get(f.id, {}).get(axis)
                if node is None or node.GetScene() is None or len(ends) != 2:
                    continue
                for i, p in enumerate(ends):
                    node.SetNthControlPointPositionWorld(i, *[float(x) for x in lps_to_ras(p)])

    # --- tracking -----------------------------------------------------------------------------------
    def record(self, store: Any, observer: str = "", *, patient_id: str = "", study_date: str = "", site: str = "") -> int:
        """The AI result (unless already in the store) and the corrections into a ``ResultStore``."""
        corrected = self.remeasure(observer) if self.corrected is None or observer else self.corrected
        if self.result_id is None:
            self.result_id = store.record_result(
                self.result, patient_id=patient_id, study_date=study_date, site=site,
                findings_path=str(self.analysis_dir / "findings.json") if self.analysis_dir else "",
            )
        store.record_corrections(self.result_id, corrected.corrections)
        return self.result_id

    # --- export -------------------------------------------------------------------------------------
    def finding_masks(self) -> dict[str, np.ndarray]:
        """The current mask of every finding in the corrected result (added ones as R1, R2, ... in the
        order ``read_corrections`` numbers untagged segments)."""
        seg_node = self.nodes.segmentation
        segmentation = seg_node.GetSegmentation()
        out: dict[str, np.ndarray] = {}
        untagged = []
        for sid in segmentation.GetSegmentIDs():
            fid = segment_tag(segmentation.GetSegment(sid), TAG_FINDING)
            if fid:
                out[fid] = _segment_mask(self.ctx, seg_node, sid, self.nodes.ai_labelmap)
            else:
                untagged.append(sid)
        for n, sid in enumerate(untagged, start=1):
            out[f"R{n}"] = _segment_mask(self.ctx, seg_node, sid, self.nodes.ai_labelmap)
        return out

    def prepare_export(self, observer: str) -> "ExportInputs":
        """Everything the export needs from the scene (re-measured result, the instance map of the
        corrected segments). Reads MRML: call it on the application's main thread."""
        if not observer.strip():
            raise ReviewError("export needs the observer: the radiologist's name as Family^Given")
        if not self.sources:
            raise ReviewError(
                f"the source images of series {self.volume.series_instance_uid or '?'} are not known: "
                "SEG and SR must reference them (open the session from an analysis folder or pass sources)"
            )
        corrected = self.remeasure(observer)
        masks = self.finding_masks()
        findings: list[Finding] = []
        warnings: list[str] = []
        instance_map = np.zeros(self.volume.array.shape, dtype=np.uint16)
        for f in corrected.result.findings:
            mask = masks.get(f.id)
            if mask is None or not mask.any():
                warnings.append(f"{f.id}: its segment is empty; left out of SEG and SR")
                continue
            findings.append(f)
            instance_map[mask & (instance_map == 0)] = len(findings)
        return ExportInputs(volume=self.volume, instance_map=instance_map, findings=findings, corrected=corrected,
                            sources=list(self.sources), card=self.card, observer=observer, warnings=warnings)

    def export(
        self,
        out_dir: str | os.PathLike[str],
        observer: str,
        *,
        key_images: bool = True,
        send_to: Optional[str] = None,
        pacs_settings: Any = None,
    ) -> ExportOutcome:
        """The corrected result as SEG + SR TID 1500 (+ key images) with the radiologist as observer,
        plus findings.json and corrections.json, into ``out_dir``; then, with ``send_to`` (a configured
        PACS node name or AET@host:port), C-STORE of the DICOM objects."""
        return write_export(self.prepare_export(observer), out_dir, key_images=key_images, send_to=send_to,
                            pacs_settings=pacs_settings)


@dataclass
class ExportInputs:
    """A snapshot of the reviewed result, independent of the scene (safe to write on a worker thread)."""

    volume: Volume
    instance_map: np.ndarray  # value n = findings[n-1]
    findings: list[Finding]
    corrected: CorrectedResult
    sources: list[Path]
    card: Any
    observer: str
    warnings: list[str] = field(default_factory=list)


def write_export(
    inputs: ExportInputs,
    out_dir: str | os.PathLike[str],
    *,
    key_images: bool = True,
    send_to: Optional[str] = None,
    pacs_settings: Any = None,
) -> ExportOutcome:
    """SEG + SR (+ key images), findings.json and corrections.json into ``out_dir``; optionally sent."""
    from ..export import DeviceInfo, export_study

    corrected = inputs.corrected
    model = corrected.result.model
    device = DeviceInfo(model_id=model.id if model else "medimgai", model_version=model.version if model else "0")
    out = Path(out_dir)
    findings = [f.model_copy(deep=True) for f in inputs.findings]
    objs = export_study(
        out, inputs.volume, inputs.instance_map, findings, inputs.sources, device,
        label_specs=finding_label_specs(inputs.card), study_measurements=corrected.result.study_measurements,
        person_observer=inputs.observer, key_images=key_images,
    )
    final = corrected.result.model_copy(deep=True)
    final.findings = findings  # with the tracking UIDs the export assigned
    final.outputs.seg = objs.seg.name if objs.seg else None
    final.outputs.sr = objs.sr.name
    final.outputs.key_images = [str(p.relative_to(out)) for p in objs.key_images]
    final.outputs.instance_map = None
    final.warnings = [*final.warnings, *inputs.warnings]
    fj = final.write(out / "findings.json")
    _write_json_atomic(out / "corrections.json", [c.model_dump(mode="json") for c in corrected.corrections])
    outcome = ExportOutcome(out_dir=out, seg=objs.seg, sr=objs.sr, key_images=list(objs.key_images),
                            findings_json=fj, warnings=list(inputs.warnings))
    if send_to:
        outcome.sent = send_to_pacs(outcome.files, send_to, pacs_settings)
    return outcome


def default_store_path() -> str:
    """The tracking store the Slicer module and the listener share: $MEDIMGAI_RESULTS_DB (a path or an
    SQLAlchemy URL) or ~/.local/share/medimgai/results.db."""
    return os.environ.get("MEDIMGAI_RESULTS_DB") or str(Path.home() / ".local" / "share" / "medimgai" / "results.db")


def send_to_pacs(files: Sequence[Path], node_spec: str, settings: Any = None) -> dict[str, Any]:
    """C-STORE ``files`` to a configured node (or AET@host:port); raises when any instance failed."""
    from ..pacs.client import store
    from ..pacs.settings import load_settings

    settings = settings or load_settings()
    node = settings.node(node_spec)
    res = store(node, settings, files)
    if res.failed:
        raise ReviewError(f"{res.failed} of {len(files)} objects were not stored on {node}: {'; '.join(res.errors[:3])}")
    return res.as_json()


def _write_json_atomic(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
    return path
