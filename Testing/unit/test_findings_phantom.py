"""Measurement accuracy on the chest-CT phantom (MedImgAILib.phantoms): noise, kernel blur, slice
profile, vessels and ribs around, and truth.json with the exact geometry.

The nodules are segmented here from the phantom's HU alone, independent of any model (threshold at
the half-way HU between the nodule and the surrounding lung, inside the truth bounding sphere), so
that what is tested is the measurement code. Target (issue 5): nodules >= 6 mm at <= 1.25 mm slices,
volume within 5 %, mean diameter within 0.7 mm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedImgAILib.findings import LabelSpec, extract_findings
from MedImgAILib.phantoms import AcquisitionSpec, NoduleSpec, PhantomSpec, generate_phantom

NODULES = [
    NoduleSpec(type="solid", diameter_mm=6.0, center_lps_mm=(-95.0, 25.0, 0.3), side="right"),
    NoduleSpec(type="solid", diameter_mm=10.0, shape="ellipsoid", center_lps_mm=(100.0, 15.0, 5.0), side="left",
               euler_deg=(30.0, 10.0, 0.0)),
    NoduleSpec(type="part_solid", diameter_mm=14.0, solid_core_diameter_mm=6.0, center_lps_mm=(-70.0, -20.0, -8.0),
               side="right"),
    NoduleSpec(type="ground_glass", diameter_mm=12.0, center_lps_mm=(60.0, 30.0, -5.0), side="left"),
    NoduleSpec(type="solid", diameter_mm=8.0, shape="lobulated", center_lps_mm=(-40.0, 45.0, 10.0), side="right"),
]
TYPE_NAMES = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}


@pytest.fixture(scope="module")
def case():
    spec = PhantomSpec(seed=3, nodules=NODULES, vary_anatomy=False,
                       acquisition=AcquisitionSpec(slice_thickness_mm=1.25, slices=40, z_start_mm=-25.0))
    return generate_phantom(spec, with_labels=False)


def inside_inflated_truth(vol, t: dict, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` (approximately, for the ellipsoid) of the truth shape: the
    ellipsoid with each semi-axis grown by the margin, united with the grown lobules. Evaluated in
    the box around the nodule only."""
    c = np.asarray(t["center_lps_mm"])
    reach = max(t["semi_axes_mm"]) + max([np.linalg.norm(np.asarray(lob["center_lps_mm"]) - c) + lob["radius_mm"]
                                          for lob in t["lobules"]] + [0.0]) + margin_mm + 1.0
    lo = np.floor(vol.lps_to_ijk(c - reach)).astype(int)
    hi = np.ceil(vol.lps_to_ijk(c + reach)).astype(int) + 1
    lo, hi = np.maximum(np.minimum(lo, hi), 0), np.minimum(np.maximum(lo, hi), vol.shape_ijk)
    i, j, k = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    p = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    axes = np.asarray(t["axes_direction_lps"])  # rows: unit axis vectors
    q = (p - c) @ axes.T
    inside = ((q / (np.asarray(t["semi_axes_mm"]) + margin_mm)) ** 2).sum(axis=1) <= 1.0
    for lob in t["lobules"]:
        inside |= np.linalg.norm(p - np.asarray(lob["center_lps_mm"]), axis=1) <= lob["radius_mm"] + margin_mm
    out = np.zeros(vol.array.shape, dtype=bool)
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = inside.reshape(i.shape).transpose(2, 1, 0)
    return out


def segment_from_hu(vol, t: dict) -> np.ndarray:
    """Model-independent segmentation of one truth nodule: threshold at the half-way HU between the
    nodule and the lung around it, inside the truth shape grown by 0.5 mm (the half-way level of a
    blurred convex edge lies at or inside the true surface, so this loses nothing, and it keeps the
    stubs of vessels that touch the nodule out of the outline), the component holding the centre,
    holes filled. A ground-glass halo has ~250 HU of contrast against lung, so image noise and lung
    texture push voxels just outside it over the half-way level: for subsolid nodules the region is
    the truth shape itself, or the segmentation, not the measurement, would be 9 % too large."""
    roi = inside_inflated_truth(vol, t, 0.5 if t["type"] == "solid" else 0.0)
    shell = inside_inflated_truth(vol, t, 5.0) & ~inside_inflated_truth(vol, t, 2.5)
    lung = float(np.median(vol.array[shell]))
    level = (t["hu"] + lung) / 2.0
    mask = roi & (vol.array > level)
    lab, _n = ndimage.label(mask)
    cijk = vol.lps_to_ijk(t["center_lps_mm"])
    centre_label = lab[tuple(np.round(cijk[::-1]).astype(int))]
    assert centre_label > 0, f"nodule {t['id']} centre not segmented"
    return ndimage.binary_fill_holes(lab == centre_label)


def test_phantom_nodules_meet_the_accuracy_target(case):
    vol = case.volume
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    for t in case.truth["nodules"]:
        labels[segment_from_hu(vol, t)] = 1
    findings = extract_findings(vol.with_array(labels), vol, label_specs=[LabelSpec(value=1, name="nodule")])
    assert len(findings) == len(NODULES)
    for t in case.truth["nodules"]:
        f = min(findings, key=lambda f: np.linalg.norm(np.asarray(f.center_lps_mm) - t["center_lps_mm"]))
        what = f"nodule {t['id']} ({t['type']} {t['shape']} {t['diameter_mm']} mm)"
        assert f.volume_mm3 == pytest.approx(t["volume_mm3"], rel=0.05), what
        assert abs(f.mean_diameter_mm - t["axial_mean_diameter_mm"]) < 0.7, what
        assert abs(f.long_axis_mm - t["axial_long_axis_mm"]) < 1.0, what
        assert f.type == TYPE_NAMES[t["type"]], what
        assert f.side == t["side"], what
        if t["type"] == "part_solid":
            assert abs(f.solid_core_mean_diameter_mm - t["solid_core_diameter_mm"]) < 1.0, what
        if t["shape"] == "sphere":
            assert np.allclose(f.center_lps_mm, t["center_lps_mm"], atol=0.5), what


def test_juxtapleural_nodules_are_flagged():
    """Phantom nodules attached to the costal pleura (placed by the generator) against free ones."""
    spec = PhantomSpec(seed=5, vary_anatomy=False,
                       nodules=[NoduleSpec(type="solid", diameter_mm=9.0, juxtapleural=True, side="left"),
                                NoduleSpec(type="part_solid", diameter_mm=12.0, juxtapleural=True, side="right"),
                                NoduleSpec(type="solid", diameter_mm=8.0, center_lps_mm=(-95.0, 25.0, 0.3)),
                                NoduleSpec(type="ground_glass", diameter_mm=12.0, center_lps_mm=(60.0, 30.0, -5.0))],
                       acquisition=AcquisitionSpec(slice_thickness_mm=2.5, matrix=256))
    case = generate_phantom(spec, with_labels=False)
    vol = case.volume
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    for t in case.truth["nodules"]:
        labels[segment_from_hu(vol, t)] = 1
    findings = extract_findings(vol.with_array(labels), vol)
    assert len(findings) == 4
    for t in case.truth["nodules"]:
        f = min(findings, key=lambda f: np.linalg.norm(np.asarray(f.center_lps_mm) - t["center_lps_mm"]))
        assert f.juxtapleural is t["juxtapleural"], f"nodule {t['id']}"
