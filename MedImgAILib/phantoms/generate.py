"""Public entry points: build a case in memory, write it as a CT series, or write a study of several
reconstructions of the same patient."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..volume import Volume
from .anatomy import Anatomy, build_anatomy
from .dicom_writer import SeriesUIDs, SeriesWriter, series_description
from .nodules import Nodule, place_nodules
from .render import Grid, Renderer, iter_slices, make_grid
from .spec import AcquisitionSpec, PhantomSpec

TRUTH_SCHEMA = "medimgai-phantom-truth/1"


@dataclass
class PhantomCase:
    """A rendered case. ``volume.array`` is HU (float32, integer-valued as stored), [k, j, i];
    ``labels`` holds nodule ids (1..N as in ``truth["nodules"]``), 0 elsewhere, on the same grid."""

    spec: PhantomSpec
    volume: Volume | None
    labels: np.ndarray | None
    truth: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.truth["geometry"]["affine_ijk_to_lps"], dtype=float)


def _prepare(spec: PhantomSpec) -> tuple[Anatomy, list[Nodule], Grid, Renderer]:
    anatomy = build_anatomy(spec.patient_seed, vary=spec.vary_anatomy, table=spec.acquisition.table)
    nodules = place_nodules(anatomy, spec.nodules, spec.random_nodules, spec.patient_seed)
    grid = make_grid(spec.acquisition, anatomy.lung_z_range)
    return anatomy, nodules, grid, Renderer(anatomy, nodules, spec.acquisition, grid)


def build_truth(spec: PhantomSpec, anatomy: Anatomy, nodules: list[Nodule], grid: Grid,
                uids: SeriesUIDs | None = None, labels: np.ndarray | None = None) -> dict[str, Any]:
    a: AcquisitionSpec = spec.acquisition
    vox = grid.dx * grid.dx * grid.dz
    nod = []
    for n in nodules:
        t = n.truth()
        if labels is not None:
            t["label_voxels"] = int((labels == n.index).sum())
            t["label_volume_mm3"] = t["label_voxels"] * vox
        nod.append(t)
    lz = anatomy.lung_z_range
    return {
        "schema": TRUTH_SCHEMA,
        "frame": "DICOM patient LPS, mm",
        "seed": spec.seed,
        "anatomy_seed": spec.patient_seed,
        "study_instance_uid": uids.study if uids else None,
        "series_instance_uid": uids.series if uids else None,
        "frame_of_reference_uid": uids.frame_of_reference if uids else None,
        "geometry": {
            "size": [grid.ni, grid.nj, grid.nk],
            "spacing": [grid.dx, grid.dx, grid.dz],
            "origin": [grid.x0, grid.y0, grid.z0],
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "affine_ijk_to_lps": grid.affine.tolist(),
            "slice_thickness_mm": grid.thickness,
        },
        "acquisition": {
            **a.model_dump(),
            "effective_mas": a.effective_mas,
            "ctdi_vol_mgy_header": spec.header_overrides.get("CTDIvol", a.ctdi_vol),
            "convolution_kernel_header": spec.header_overrides.get("ConvolutionKernel", a.convolution_kernel),
            "blur_sigma_mm_used": a.blur_sigma,
            "edge_enhancement_used": a.edge_gain,
            "noise_texture": "through kernel" if a.noise_corr is None else f"gaussian {a.noise_corr} mm",
        },
        #: the SD (HU) of the added noise: what a homogeneous region's SD should measure
        "noise_sd_hu": a.noise_sd,
        "series_description": series_description(spec),
        "study": spec.study.model_dump(),
        "anatomy": {
            "scale_lateral_ap_cc": list(anatomy.scale),
            "lung_z_range_mm": [lz[0], lz[1]],
            "lungs_fully_covered": bool(grid.z0 - grid.thickness / 2 < lz[0] and grid.z[-1] + grid.thickness / 2 > lz[1]),
            "vessel_segments": len(anatomy.vessels),
            "body_semi_axes_mm": [anatomy.body.a, anatomy.body.b],
        },
        "nodules": nod,
        "generator": "MedImgAILib.phantoms",
        "spec": json.loads(spec.model_dump_json()),
    }


def default_workers() -> int:
    """Rendering threads: two (the chunks overlap well in numpy/scipy), fewer on a one-core machine."""
    return max(1, min(2, os.cpu_count() or 1))


def generate_phantom(spec: PhantomSpec | None = None, with_labels: bool = True, workers: int | None = None) -> PhantomCase:
    """Render a case in memory (no files): HU volume, nodule label map and truth. Pixels do not
    depend on ``workers``."""
    spec = spec or PhantomSpec()
    anatomy, nodules, grid, renderer = _prepare(spec)
    arr = np.empty((grid.nk, grid.nj, grid.ni), dtype=np.float32)
    labels = np.zeros(arr.shape, dtype=np.uint8) if with_labels else None
    for k, sl in iter_slices(renderer, spec.seed, spec.study.series_number, labels=labels,
                             workers=workers or default_workers()):
        arr[k] = sl
    truth = build_truth(spec, anatomy, nodules, grid, None, labels)
    vol = Volume(array=arr, affine=grid.affine, modality="CT")
    return PhantomCase(spec=spec, volume=vol, labels=labels, truth=truth)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def write_phantom_series(spec: PhantomSpec | None, out_dir: str | Path, keep_volume: bool = True,
                         labels_nifti: bool = False, study_uid: str | None = None,
                         frame_uid: str | None = None, workers: int | None = None) -> PhantomCase:
    """Write the case as a CT series (CT#####.dcm, instance 1 most superior) plus truth.json into
    ``out_dir``; truth.json is written last, so its presence means the series is complete."""
    spec = spec or PhantomSpec()
    out = Path(out_dir)
    t0 = time.perf_counter()
    anatomy, nodules, grid, renderer = _prepare(spec)
    uids = SeriesUIDs.make(spec, study_uid, frame_uid)
    writer = SeriesWriter(spec, out, uids, grid.nj, grid.ni, grid.dx, grid.nk)
    labels = np.zeros((grid.nk, grid.nj, grid.ni), dtype=np.uint8)
    arr = np.empty(labels.shape, dtype=np.float32) if keep_volume else None
    zs = grid.z
    omit = set(spec.omit_slices)
    for k, sl in iter_slices(renderer, spec.seed, spec.study.series_number, labels=labels,
                             workers=workers or default_workers()):
        if k not in omit:
            writer.write(k, grid.x0, grid.y0, float(zs[k]), sl)
        if arr is not None:
            arr[k] = sl
    truth = build_truth(spec, anatomy, nodules, grid, uids, labels)
    truth["files"] = sorted(writer.files)
    truth["omitted_slices"] = sorted(omit)
    truth["generation_seconds"] = round(time.perf_counter() - t0, 3)
    vol = None
    lab_vol = Volume(array=labels, affine=grid.affine)
    if labels_nifti:
        from ..fileio import save_nifti

        save_nifti(lab_vol.to_nifti(), out / "nodule_labels.nii.gz")
        truth["labels_file"] = "nodule_labels.nii.gz"
    if arr is not None:
        vol = Volume(array=arr, affine=grid.affine, series_instance_uid=uids.series, study_instance_uid=uids.study,
                     frame_of_reference_uid=uids.frame_of_reference, modality="CT",
                     source_sop_instance_uids=list(writer.sop_uids), source_frame_numbers=[1] * grid.nk,
                     source_sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    _write_json_atomic(out / "truth.json", truth)
    return PhantomCase(spec=spec, volume=vol, labels=labels, truth=truth,
                       files=[out / f for f in sorted(writer.files)], out_dir=out)


def write_study(spec: PhantomSpec, out_dir: str | Path, reconstructions: Sequence[dict[str, Any]] | None = None,
                keep_volume: bool = False) -> list[PhantomCase]:
    """Several series of one patient in one study (same StudyInstanceUID and FrameOfReferenceUID,
    same anatomy and nodules), e.g. a 1.25 mm sharp and a 5 mm soft reconstruction. Each entry of
    ``reconstructions`` overrides acquisition fields; series go to ``out_dir/series-NNN``."""
    recons = list(reconstructions or [
        {"slice_thickness_mm": 1.25, "kernel": "sharp"},
        {"slice_thickness_mm": 5.0, "kernel": "soft"},
    ])
    base_uids = SeriesUIDs.make(spec)
    out = Path(out_dir)
    cases = []
    for n, over in enumerate(recons):
        acq = spec.acquisition.model_copy(update=over)
        acq = AcquisitionSpec.model_validate(acq.model_dump())
        number = spec.study.series_number + n
        s = spec.model_copy(update={
            "acquisition": acq,
            "study": spec.study.model_copy(update={"series_number": number}),
            "anatomy_seed": spec.patient_seed,
        })
        cases.append(write_phantom_series(s, out / f"series-{number:03d}", keep_volume=keep_volume,
                                          study_uid=base_uids.study, frame_uid=base_uids.frame_of_reference))
    return cases
