"""SEG, SR TID 1500 and key images for a CT study with two nodules, checked by the validator
(dciodvfy) and read back by independent readers (dcmqi's segimage2itkimage / tid1500reader) and by
highdicom: the masks and the values a PACS user gets are the ones we measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from MedImgAILib.errors import ExportError
from MedImgAILib.export import DeviceInfo, ExportUIDs, build_seg, build_sr, export_study, source_datasets
from MedImgAILib.export.key_images import OUTLINE_RGB
from MedImgAILib.export.seg import segments_from_findings, segments_from_labels
from MedImgAILib.findings import LabelSpec, extract_findings
from MedImgAILib.results import Category, Code
from Testing.conftest import require_tool
from Testing.unit._analytic_shapes import Ellipsoid, halfway_mask, load_ct_series, lung_image, write_ct_series

DEVICE = DeviceInfo(model_id="ct-lung-nodule", model_version="1.2.0")
NODULE_SPEC = LabelSpec(value=1, name="nodule")


def dcmqi_tool(name: str) -> str:
    """dcmqi's binaries live in the venv's bin beside the interpreter running the tests."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else require_tool(name)


def dciodvfy_errors(dciodvfy: str, path: Path) -> list[str]:
    r = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A chest CT phantom (0.7 x 0.7 x 1.25 mm) with a solid and a part-solid nodule, analysed and
    exported the way the pipeline does it, with rule categories attached."""
    root = tmp_path_factory.mktemp("export")
    solid = Ellipsoid(center_lps=(-14.2, 3.1, 0.4), semi_axes_mm=(5.0, 3.5, 4.0), hu=30.0, rotation_z_rad=0.5)
    ps = Ellipsoid(center_lps=(12.3, -4.0, -1.1), semi_axes_mm=(6.0, 6.0, 5.0), hu=-600.0)
    core = Ellipsoid(center_lps=(12.3, -4.0, -1.1), semi_axes_mm=(2.5, 2.5, 2.5), hu=20.0)
    img = lung_image([solid, ps, core], shape_kji=(20, 72, 72), origin=(-25.0, -25.0, -12.5))
    paths = write_ct_series(img, root / "ct")
    labels = halfway_mask(img, -600.0)
    findings, inst = extract_findings(labels, img, label_specs=[NODULE_SPEC], return_instance_map=True)
    for f in findings:
        f.categories = [Category(system="Lung-RADS", version="v2022", value="4A" if f.type == "solid" else "4B",
                                 recommendation="3-month LDCT; PET/CT may be used when there is a >= 8 mm solid component")]
    out = export_study(root / "out", img, inst, findings, paths, DEVICE, label_specs=[NODULE_SPEC],
                       study_measurements={"total_nodule_volume_mm3": sum(f.volume_mm3 for f in findings)})
    return dict(root=root, img=img, paths=paths, findings=findings, inst=inst, out=out)


def test_every_object_passes_dciodvfy(study, dciodvfy):
    out = study["out"]
    objects = [out.seg, out.sr, *out.key_images]
    assert len(out.key_images) == 2
    for p in objects:
        assert dciodvfy_errors(dciodvfy, p) == [], p.name
    assert not list(study["root"].glob("out/**/*.partial"))


def test_seg_read_back_by_dcmqi_has_identical_masks_and_tracking(study, tmp_path):
    out, findings, inst, img = study["out"], study["findings"], study["inst"], study["img"]
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(out.seg), "--outputDirectory", str(tmp_path),
                    "-t", "nrrd"], check=True, capture_output=True)
    meta = json.loads((tmp_path / "meta.json").read_text())
    attrs = [a for group in meta["segmentAttributes"] for a in group]
    assert [a["TrackingUniqueIdentifier"] for a in attrs] == [f.tracking_uid for f in findings]
    assert all(a["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "27925004" for a in attrs)
    assert all(a["SegmentAlgorithmName"] == "ct-lung-nodule" for a in attrs)
    for a in attrs:
        n = a["labelID"]
        seg_img = sitk.ReadImage(str(tmp_path / f"{n}.nrrd"))
        got = _into_grid(seg_img, img)
        assert np.array_equal(got > 0, inst == n), f"segment {n}"


def _into_grid(image: sitk.Image, ref) -> np.ndarray:
    """dcmqi writes each segment on its own (possibly cropped) grid: place it on the CT grid."""
    arr = sitk.GetArrayFromImage(image)
    out = np.zeros(ref.array.shape, dtype=arr.dtype)
    origin_ijk = np.round(ref.lps_to_ijk(image.GetOrigin())).astype(int)
    assert np.allclose(image.GetSpacing(), ref.spacing, atol=1e-3)
    k0, j0, i0 = origin_ijk[2], origin_ijk[1], origin_ijk[0]
    out[k0:k0 + arr.shape[0], j0:j0 + arr.shape[1], i0:i0 + arr.shape[2]] = arr
    return out


def test_sr_read_back_by_dcmqi_has_identical_values(study, tmp_path):
    out, findings = study["out"], study["findings"]
    js = tmp_path / "sr.json"
    subprocess.run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(out.sr), "--outputMetadata", str(js)],
                   check=True, capture_output=True)
    meta = json.loads(js.read_text())
    groups = [g for g in meta["Measurements"] if g.get("ReferencedSegment")]
    assert len(groups) == 2
    seg_uid = pydicom.dcmread(out.seg, stop_before_pixels=True).SOPInstanceUID
    for n, (g, f) in enumerate(zip(groups, findings), start=1):
        assert g["TrackingUniqueIdentifier"] == f.tracking_uid
        assert g["ReferencedSegment"] == n
        assert g["segmentationSOPInstanceUID"] == seg_uid
        assert g["SourceSeriesForImageSegmentation"] == study["img"].series_instance_uid
        assert g["Finding"]["CodeValue"] == "27925004"
        assert g["FindingSite"]["CodeMeaning"] == ("Right lung" if f.side == "right" else "Left lung")
        values = {(m["quantity"]["CodeMeaning"], m.get("derivationModifier", {}).get("CodeMeaning")): float(m["value"])
                  for m in g["measurementItems"]}
        # DICOM DS holds 16 characters: equal to ~1e-10 relative
        expect = {
            ("Volume", None): f.volume_mm3,
            ("Long axis", None): f.long_axis_mm,
            ("Short axis", None): f.short_axis_mm,
            ("Diameter", "Mean"): f.mean_diameter_mm,
            ("Diameter", "Maximum"): f.max_3d_diameter_mm,
            ("Attenuation Coefficient", "Mean"): f.mean_hu,
            ("Attenuation Coefficient", "Standard Deviation"): f.sd_hu,
        }
        for key, v in expect.items():
            assert values[key] == pytest.approx(v, rel=1e-10, abs=1e-10), key
        qual = {q["conceptCode"]["CodeMeaning"]: q["conceptValue"] for q in g["qualitativeEvaluations"]}
        assert qual["Lung-RADS v2022 category"]["CodeMeaning"] == f"Lung-RADS {f.categories[0].value}"
    assert meta["observerContext"]["DeviceObserverName"] == "ct-lung-nodule"


def test_written_objects_are_byte_for_byte_what_pydicom_writes(study, tmp_path):
    """write_atomic hands pydicom the UID-only reference lists pre-encoded: same bytes as pydicom's own
    writer, and the lists read back as ordinary sequences."""
    import copy
    import io

    from MedImgAILib.export.common import write_atomic

    img, findings, inst = study["img"], study["findings"], study["inst"]
    srcs = source_datasets(study["paths"], img)
    uids = ExportUIDs()
    seg = build_seg(img.with_array(inst), srcs, segments_from_findings(findings, [NODULE_SPEC]), DEVICE, uids,
                    related_series=[uids.sr_series])
    sr = build_sr(findings, seg, srcs, DEVICE, uids)
    for name, ds in (("seg", seg), ("sr", sr)):
        plain = io.BytesIO()
        copy.deepcopy(ds).save_as(plain, enforce_file_format=True)
        path = write_atomic(ds, tmp_path / f"{name}.dcm")
        assert path.read_bytes() == plain.getvalue(), name
    assert any(e.is_raw for e in seg.elements())  # the fast path was taken
    assert [r.ReferencedSOPInstanceUID for r in seg.SourceImageSequence] == img.source_sop_instance_uids
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    refs = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {r.ReferencedSOPInstanceUID for s in refs for r in s.ReferencedSOPSequence} >= set(img.source_sop_instance_uids)


def test_seg_and_sr_round_trip_through_highdicom(study):
    out, findings, inst, img = study["out"], study["findings"], study["inst"], study["img"]
    seg = hd.seg.segread(out.seg)
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=img.source_sop_instance_uids, combine_segments=True, skip_overlap_checks=True
    )
    assert np.array_equal(labels, inst)
    # frames come only from labelled slices, yet the SEG names every image of the analysed series
    labelled = {img.source_sop_instance_uids[k] for k in np.flatnonzero(inst.reshape(len(inst), -1).any(axis=1))}
    assert len(labelled) < len(img.source_sop_instance_uids)
    assert {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg.PerFrameFunctionalGroupsSequence} == labelled
    assert [r.ReferencedSOPInstanceUID for r in seg.SourceImageSequence] == img.source_sop_instance_uids
    assert [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == \
        img.source_sop_instance_uids
    assert [seg.get_segment_description(n).tracking_uid for n in (1, 2)] == [f.tracking_uid for f in findings]
    assert seg.get_segment_numbers(tracking_uid=findings[1].tracking_uid) == [2]

    sr = hd.sr.srread(out.sr)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_uid for g in groups] == [f.tracking_uid for f in findings]
    for g, f in zip(groups, findings):
        assert g.referenced_segment.referenced_segment_numbers == [findings.index(f) + 1]
        assert g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        vol = g.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))[0]
        assert vol.value == pytest.approx(f.volume_mm3, rel=1e-10)
        assert vol.unit.value == "mm3"
        texts = [i for i in g[0].ContentSequence
                 if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Recommendation"]
        assert texts and "3-month LDCT" in texts[0].TextValue
    # the references that tie the objects together
    evidence_uids = {
        r.ReferencedSOPInstanceUID
        for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
        for st in sr.get(seq, [])
        for se in st.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence_uids
    assert set(img.source_sop_instance_uids) <= evidence_uids
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.key_images} <= evidence_uids
    related = {r.SeriesInstanceUID for r in seg.RelatedSeriesSequence}
    assert related == {out.uids.sr_series, out.uids.key_image_series}


def test_key_images_show_the_outline_on_the_measured_slice(study):
    out, findings, img = study["out"], study["findings"], study["img"]
    for p, f in zip(out.key_images, findings):
        ds = pydicom.dcmread(p)
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.BurnedInAnnotation == "NO"
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == img.source_sop_instance_uids[f.slice_index]
        assert ds.PatientName == "Phantom^Analytic"  # in the header, as for the source; not in the pixels
        px = ds.pixel_array
        assert px.shape == (2 * img.array.shape[1], 2 * img.array.shape[2], 3)
        yellow = np.all(px == OUTLINE_RGB, axis=-1)
        rows, cols = np.nonzero(yellow)
        i, j, _k = img.lps_to_ijk(f.center_lps_mm)
        # the outline surrounds the lesion centre, about one mean diameter across
        mid_c, mid_r = (cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2
        assert abs(mid_c / 2 - 0.5 - i) < 1.5 and abs(mid_r / 2 - 0.5 - j) < 1.5
        width_mm = (cols.max() - cols.min()) / 2 * img.spacing[0]
        assert width_mm == pytest.approx(f.long_axis_mm, abs=2.5)


def test_radiologist_confirmation_makes_the_sr_verified_with_a_person_observer(study, tmp_path, dciodvfy):
    img, findings, inst = study["img"], study["findings"], study["inst"]
    out = export_study(tmp_path, img, inst, findings, study["paths"], DEVICE, label_specs=[NODULE_SPEC],
                       person_observer="Curie^Marie", key_images=False)
    sr = pydicom.dcmread(out.sr)
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "Curie^Marie"
    assert "Curie^Marie" in {str(i.get("PersonName", "")) for i in _walk(sr)}
    assert dciodvfy_errors(dciodvfy, out.sr) == []


def _copy_dates(src, dst) -> None:
    """Give ``dst`` the dates and times of ``src`` (same structure), at every depth."""
    for elem in src:
        if elem.VR in ("DA", "TM", "DT"):
            dst[elem.tag].value = elem.value
        elif elem.VR == "SQ":
            for a, b in zip(elem.value, dst[elem.tag].value):
                _copy_dates(a, b)


def _file_bytes(ds) -> bytes:
    import io

    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


@pytest.mark.parametrize("case", ["device", "person", "study measurements", "no findings"])
def test_sr_shortcuts_give_what_highdicom_builds_itself(study, monkeypatch, case):
    """build_sr gives highdicom the root container without its children and one source image, then sets
    the children and the whole evidence list itself: the same file as highdicom's own construction
    (which copies, re-parses and searches the tree), dates and times aside; the same content too."""
    from MedImgAILib.export import sr as srm
    from MedImgAILib.export.key_images import build_key_images

    img, findings, inst = study["img"], study["findings"], study["inst"]
    srcs = source_datasets(study["paths"], img)
    uids = ExportUIDs()
    seg = build_seg(img.with_array(inst), srcs, segments_from_findings(findings, [NODULE_SPEC]), DEVICE, uids)
    kis = build_key_images(img, findings, srcs, DEVICE, uids, instance_map=inst)
    sources = [*srcs, srcs[0]]  # an instance twice (a multi-frame source): listed once
    kwargs = {"person": dict(person_observer="Curie^Marie"),
              "study measurements": dict(study_measurements={"total_nodule_volume_mm3": 123.4}),
              "no findings": dict(absent_finding=NODULE_SPEC.finding_code)}.get(case, {})
    if case == "no findings":
        findings, seg, kis = [], None, []
    monkeypatch.setattr(srm.hd, "UID", lambda: "1.2.826.0.1.3680043.8.498.1")  # the groups' own tracking UIDs
    built = {}
    for shortcuts in (True, False):
        monkeypatch.setattr(srm, "SHORTCUTS", shortcuts)
        built[shortcuts] = build_sr(findings, seg, sources, DEVICE, uids, extra_evidence=kis, **kwargs)
    fast, ref = built[True], built[False]
    assert str(fast.content) == str(ref.content)
    _copy_dates(ref, fast)
    assert _file_bytes(fast) == _file_bytes(ref)
    series = {s.SeriesInstanceUID: s for s in fast.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    listed = [r.ReferencedSOPInstanceUID for r in series[img.series_instance_uid or srcs[0].SeriesInstanceUID].ReferencedSOPSequence]
    assert listed == img.source_sop_instance_uids


def _walk(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_study_level_measurements_are_a_group_of_their_own(study, tmp_path):
    js = tmp_path / "sr.json"
    subprocess.run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(study["out"].sr), "--outputMetadata", str(js)],
                   check=True, capture_output=True)
    groups = json.loads(js.read_text())["Measurements"]
    study_groups = [g for g in groups if g["TrackingIdentifier"] == "study measurements"]
    assert len(study_groups) == 1
    (m,) = study_groups[0]["measurementItems"]
    assert float(m["value"]) == pytest.approx(sum(f.volume_mm3 for f in study["findings"]), rel=1e-10)
    assert m["units"]["CodeValue"] == "mm3"


def test_real_ct_liver_and_spine_seg_and_sr(ct3slice_dir, tmp_path, dciodvfy):
    """The real GE CT and its real liver and spine label maps -> SEG + SR that dcmqi reads back."""
    paths = sorted(ct3slice_dir.glob("0?.dcm"))
    ct, _ = load_ct_series(paths)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(ct3slice_dir / "liver_seg.nrrd")))
    spine = sitk.GetArrayFromImage(sitk.ReadImage(str(ct3slice_dir / "spine_seg.nrrd")))
    labels = ct.with_array((liver + spine).astype(np.uint8))  # 1 = liver, 2 = spine
    anat = Code(value="123037004", scheme="SCT", meaning="Anatomical Structure")
    specs = [
        LabelSpec(1, "Liver", finding_code=Code(value="10200004", scheme="SCT", meaning="Liver"),
                  category_code=anat, is_lung_lesion=False),
        LabelSpec(2, "Spine", finding_code=Code(value="421060004", scheme="SCT", meaning="Spine"),
                  category_code=anat, is_lung_lesion=False),
    ]
    srcs = source_datasets(paths, ct)
    uids = ExportUIDs()
    segments = segments_from_labels(specs)
    seg = build_seg(labels, srcs, segments, DEVICE, uids)
    fs = extract_findings(labels, ct, label_specs=specs)
    per_label = {f.label: f for f in reversed(fs)}  # the largest component of each label
    main = [per_label["Liver"], per_label["Spine"]]
    for f, s in zip(main, segments):
        f.tracking_uid = s.tracking_uid
    sr = build_sr(main, seg, srcs, DEVICE, uids)
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(dciodvfy, tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(dciodvfy, tmp_path / "sr.dcm") == []
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(tmp_path / "seg.dcm"),
                    "--outputDirectory", str(tmp_path), "-t", "nrrd"], check=True, capture_output=True)
    for n, truth in ((1, liver), (2, spine)):
        got = _into_grid(sitk.ReadImage(str(tmp_path / f"{n}.nrrd")), ct)
        assert np.array_equal(got > 0, truth > 0)
    subprocess.run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(tmp_path / "sr.dcm"),
                    "--outputMetadata", str(tmp_path / "sr.json")], check=True, capture_output=True)
    groups = json.loads((tmp_path / "sr.json").read_text())["Measurements"]
    vols = [float(next(m["value"] for m in g["measurementItems"] if m["quantity"]["CodeMeaning"] == "Volume"))
            for g in groups]
    assert vols == pytest.approx([main[0].volume_mm3, main[1].volume_mm3], rel=1e-10)


# --- bad input: a clear ExportError that says what is missing, and nothing written -----------------
def test_source_without_frame_of_reference_is_refused(study):
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in study["paths"]]
    del dss[3].FrameOfReferenceUID
    with pytest.raises(ExportError, match=rf"source image {dss[3].SOPInstanceUID} lacks FrameOfReferenceUID"):
        source_datasets(dss, study["img"])


def test_finding_without_a_code_is_refused_and_nothing_is_written(study, tmp_path):
    findings = [f.model_copy(deep=True) for f in study["findings"]]
    findings[1].finding_code = None
    with pytest.raises(ExportError, match=r"finding F2 \(nodule\) type has no code"):
        export_study(tmp_path / "o", study["img"], study["inst"], findings, study["paths"], DEVICE)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))


def test_label_map_on_another_grid_is_refused(study):
    img = study["img"]
    srcs = source_datasets(study["paths"], img)
    with pytest.raises(ExportError, match=r"does not match source series .* resample"):
        build_seg(img.with_array(study["inst"])  # drop a slice
                  .__class__(array=study["inst"][1:], affine=img.affine), srcs,
                  segments_from_findings(study["findings"], [NODULE_SPEC]), DEVICE)


def test_slice_without_its_source_instance_is_refused(study):
    with pytest.raises(ExportError, match=r"slice k=0 comes from instance .* not among the source images"):
        source_datasets(study["paths"][1:], study["img"])


def test_segment_without_voxels_is_refused(study):
    img = study["img"]
    srcs = source_datasets(study["paths"], img)
    empty = np.zeros_like(study["inst"])
    with pytest.raises(ExportError, match=r"segment 1 \(F1 nodule\) has no voxels"):
        build_seg(img.with_array(empty), srcs, segments_from_findings(study["findings"], [NODULE_SPEC]), DEVICE)


def test_unreadable_source_file_is_named(tmp_path):
    bad = tmp_path / "not_dicom.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(ExportError, match="not_dicom.dcm cannot be read as DICOM"):
        source_datasets([bad])


def test_study_without_findings_gets_an_sr_and_no_seg(study, tmp_path, dciodvfy):
    out = export_study(tmp_path, study["img"], np.zeros_like(study["inst"]), [], study["paths"], DEVICE,
                       label_specs=[NODULE_SPEC])
    assert out.seg is None and out.key_images == []
    assert dciodvfy_errors(dciodvfy, out.sr) == []
    content = hd.sr.srread(out.sr).content
    assert content.get_volumetric_roi_measurement_groups() == []
    (group,) = content.get_image_measurement_groups()
    (ev,) = group.get_qualitative_evaluations()
    assert (ev.name.meaning, ev.value.meaning) == ("Nodule", "Absent")


def test_no_patient_name_in_warnings_or_logs(ct3slice_dir, tmp_path, recwarn, caplog):
    """The real file's single-component name makes highdicom warn with the name in the text: that
    warning must not reach ordinary logs."""
    paths = sorted(ct3slice_dir.glob("0?.dcm"))
    ct, _ = load_ct_series(paths)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(ct3slice_dir / "liver_seg.nrrd"))).astype(np.uint8)
    spec = LabelSpec(1, "Liver", finding_code=Code(value="10200004", scheme="SCT", meaning="Liver"),
                     is_lung_lesion=False)
    fs, inst = extract_findings(ct.with_array(liver), ct, label_specs=[spec], return_instance_map=True)
    export_study(tmp_path, ct, inst, fs[:1], paths, DEVICE, label_specs=[spec])
    texts = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    assert not any("JANCT000" in t for t in texts)


# --- the pipeline's sources: the scan's headers, full ones read only where attributes are copied ---
def _normalised(ds, uid_names: dict[str, str]):
    """A dataset as nested plain values, the generated UIDs named by role and dates/times left out
    (two exports differ in those alone)."""
    out = {}
    for elem in ds:
        if elem.VR in ("DA", "TM", "DT") or elem.tag == 0x7FE00010:
            continue
        if elem.VR == "SQ":
            out[elem.keyword or str(elem.tag)] = [_normalised(item, uid_names) for item in elem.value]
        elif elem.VR == "UI":
            vals = elem.value if isinstance(elem.value, list) else [elem.value]
            out[elem.keyword] = [uid_names.get(str(v), str(v)) for v in vals]
        else:
            out[elem.keyword or str(elem.tag)] = str(elem.value)
    return out


def _generated_uids(out, tracked: set[str]) -> dict[str, str]:
    u = out.uids
    names = {u.seg_series: "SEG series", u.seg_instance: "SEG", u.sr_series: "SR series", u.sr_instance: "SR",
             u.key_image_series: "key-image series"}
    for n, p in enumerate(out.key_images):
        names[pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID] = f"key image {n}"
    seg = pydicom.dcmread(out.seg, stop_before_pixels=True)
    names[seg.DimensionOrganizationSequence[0].DimensionOrganizationUID] = "dimension organization"

    def tracking_uids(items):  # the study-level measurement group's tracking UID is generated too
        for item in items:
            if item.get("ValueType") == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "112040":
                yield item.UID
            yield from tracking_uids(item.get("ContentSequence", []))

    for uid in tracking_uids(pydicom.dcmread(out.sr).ContentSequence):
        names.setdefault(uid, f"tracking {uid if uid in tracked else 'generated'}")
    return names


@pytest.mark.parametrize("scan_headers", ["fast", "pydicom"])
def test_objects_from_the_scan_headers_equal_those_from_the_files(study, tmp_path, scan_headers):
    """The pipeline's export (scan headers, full ones only where copied; SEG + SR, then key images)
    writes the same objects as the export from the files, up to generated UIDs and times."""
    from MedImgAILib.dicom.scan import scan
    from MedImgAILib.export import SeriesHeaders, export_key_images, export_results

    (ref,) = scan(study["root"] / "ct")
    if scan_headers == "pydicom":  # what the scan keeps for files its fast reader leaves to pydicom
        for h in ref.instances:
            h.dataset  # noqa: B018 - reads the pydicom header in place of the fast one
    assert {type(h.header).__name__ for h in ref.instances} == {"FastHeader" if scan_headers == "fast" else "FileDataset"}
    img, inst, findings = study["img"], study["inst"], study["findings"]
    headers = SeriesHeaders(ref.instances, img)
    full = sorted({0, *np.flatnonzero(inst.reshape(inst.shape[0], -1).max(axis=1)).tolist(),
                   *(f.slice_index for f in findings)})
    assert len(full) < inst.shape[0]  # some slices are reference-only: the case this test is about
    srcs = source_datasets(headers, img, full=full)
    assert [d.SOPInstanceUID for d in srcs] == img.source_sop_instance_uids
    assert "PatientID" in srcs[0] and "PatientID" not in srcs[next(k for k in range(len(srcs)) if k not in full)]
    kw = dict(label_specs=[NODULE_SPEC], study_measurements={"total_nodule_volume_mm3": 1.0})
    a = export_study(tmp_path / "files", img, inst, findings, study["paths"], DEVICE, **kw)
    b = export_study(tmp_path / "scan", img, inst, findings, headers, DEVICE, **kw)
    # the pipeline's two steps: SEG + SR (stored first), then the key images the SR announced
    c = export_results(tmp_path / "two", img, inst, findings, headers, DEVICE, **kw)
    assert c.key_images == [] and not (tmp_path / "two" / "key_images").exists()
    export_key_images(tmp_path / "two", c, img, inst, findings, DEVICE)
    tracked = {f.tracking_uid for f in findings}
    na = _generated_uids(a, tracked)
    for other in (b, c):
        no = _generated_uids(other, tracked)
        assert len(other.key_images) == len(a.key_images) == len(findings)
        for pa, pb in [(a.seg, other.seg), (a.sr, other.sr), *zip(a.key_images, other.key_images)]:
            da, db = pydicom.dcmread(pa), pydicom.dcmread(pb)
            assert _normalised(da, na) == _normalised(db, no), pa.name
            if "PixelData" in da:
                assert da.PixelData == db.PixelData


def test_scan_headers_missing_a_reference_tag_are_refused(study, tmp_path):
    import shutil

    from MedImgAILib.dicom.scan import scan
    from MedImgAILib.export import SeriesHeaders

    folder = tmp_path / "ct"
    shutil.copytree(study["root"] / "ct", folder)
    victim = sorted(folder.glob("*.dcm"))[5]
    ds = pydicom.dcmread(victim)
    del ds.FrameOfReferenceUID
    ds.save_as(victim)
    (ref,) = scan(folder)
    with pytest.raises(ExportError, match=rf"source image {ds.SOPInstanceUID} lacks FrameOfReferenceUID"):
        SeriesHeaders(ref.instances, study["img"])
