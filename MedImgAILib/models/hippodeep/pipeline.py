"""The hippodeep T1 pipeline (SPEC.md section 5): head box -> intracranial and cerebrum masks ->
affine to template -> hippocampus crops -> back to the source grid -> volumes.

Frames. The library's ``Volume`` is ``array[k, j, i]`` with an IJK->LPS affine. The published method is
defined on nibabel's ``[i, j, k]`` array with an IJK->RAS affine (its orientation logic, its LAS box,
its template). ``_NativeGrid`` is the one place that converts: it views the same memory as ``[i, j, k]``
(no copy, so reductions run in the same order as the original's) and flips the affine's x and y rows.
Every mask goes back through ``_NativeGrid.to_volume_order``.

Exactness. The original's results depend on a few float details (float16 native coordinates, float32
coordinate chains, the memory layout handed to ``grid_sample``). They are reproduced where SPEC.md or
REFERENCE.md says they show; each place says so. Everything else is float32 as in the original.

Memory. The original builds a full-resolution coordinate grid (3 floats per voxel) for the mask
resampling; here it is built one slab of the first axis at a time, which gives the same numbers with a
bounded footprint (``_SLAB_VOXELS``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import nibabel.orientations as nibo
import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from ...volume import Volume
from .networks import AffineNet, HeadNet, HippoNet

log = logging.getLogger(__name__)

#: the template box the head and affine networks work in (column convention, MNI RAS+ mm): LAS order
TEMPLATE_BOX_AFFINE = np.array(
    [
        [-2.85714293, 0.0, 0.0, 90.0],
        [0.0, 3.42857146, 0.0, -126.0],
        [0.0, 0.0, 2.85714293, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
BOX = 64
#: 1 mm hippocampus crop in template space covering both sides (axis 0 runs right to left)
CROP_AFFINE = np.array([[-1.0, 0.0, 0.0, 54.0], [0.0, 1.0, 0.0, -59.0], [0.0, 0.0, 1.0, -45.0], [0.0, 0.0, 0.0, 1.0]])
CROP_SHAPE = (107, 72, 68)
#: soft-mask values below this (of 255) are noise and dropped, as in the original
SOFT_NOISE_FLOOR = 32.0
#: the binarisation threshold of the uint8 soft masks: >= 128 is the 50 % level after the remap
BINARY_THRESHOLD = 128
#: coordinate-grid slab size for the native-space resampling (voxels per slab), bounds peak memory
_SLAB_VOXELS = 1_000_000

_LAS_SIGNS = np.array([-1.0, 1.0, 1.0])  # LAS: +x (R) flipped, +y (A), +z (S)

ProgressFn = Callable[[str, float], None]


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------
@dataclass
class HippodeepResult:
    """Masks on the source grid (``[k, j, i]`` like the input ``Volume``) and volumes in mm3.

    ``hippocampus_*_soft`` are the original's uint8 soft masks (0, or 32..255 where 255 = certain);
    ``hippocampus_*_mm3`` are the published volumes: the sum of the float soft values / 255 x voxel
    volume, computed before the uint8 cast (so slightly above the sum of the stored masks).
    """

    source: Volume
    brain_mask: np.ndarray  # uint8 0/1, intracranial (eTIV) mask
    cerebrum_mask: np.ndarray  # uint8 0/1
    hippocampus_left_soft: np.ndarray  # uint8 0 / 32..255
    hippocampus_right_soft: np.ndarray  # uint8 0 / 32..255
    etiv_mm3: float
    cerebrum_mm3: float
    hippocampus_left_mm3: float
    hippocampus_right_mm3: float
    voxel_volume_mm3: float
    #: native world (RAS mm) -> template (MNI RAS mm), column convention
    native_ras_to_mni: np.ndarray = field(default_factory=lambda: np.eye(4))
    #: the affine network's output T (template box -> subject LAS box, normalised coordinates)
    template_transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    #: native (i, j, k) box that holds both hippocampus masks: start and size
    hippocampus_box_start_ijk: tuple[int, int, int] = (0, 0, 0)
    hippocampus_box_size_ijk: tuple[int, int, int] = (0, 0, 0)
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # --- derived measures -------------------------------------------------------------------------
    @property
    def hippocampus_total_mm3(self) -> float:
        return self.hippocampus_left_mm3 + self.hippocampus_right_mm3

    @property
    def hippocampal_fraction_of_etiv(self) -> float:
        """(left + right) / eTIV, dimensionless (typically ~0.004-0.005 in adults)."""
        return self.hippocampus_total_mm3 / self.etiv_mm3 if self.etiv_mm3 > 0 else float("nan")

    @property
    def asymmetry_index(self) -> float:
        """(left - right) / mean(left, right), dimensionless; positive when the left is larger.
        The usual definition in hippocampal volumetry; x100 gives percent."""
        mean = self.hippocampus_total_mm3 / 2.0
        return (self.hippocampus_left_mm3 - self.hippocampus_right_mm3) / mean if mean > 0 else float("nan")

    # --- binary masks -----------------------------------------------------------------------------
    def hippocampus_left_mask(self, threshold: int = BINARY_THRESHOLD) -> np.ndarray:
        return (self.hippocampus_left_soft >= threshold).astype(np.uint8)

    def hippocampus_right_mask(self, threshold: int = BINARY_THRESHOLD) -> np.ndarray:
        return (self.hippocampus_right_soft >= threshold).astype(np.uint8)

    def label_map(self, threshold: int = BINARY_THRESHOLD) -> np.ndarray:
        """uint8 [k, j, i]: 1 left hippocampus, 2 right hippocampus (binarised at ``threshold``).
        The intracranial and cerebrum masks overlap these and are kept as their own masks."""
        out = np.zeros(self.brain_mask.shape, np.uint8)
        out[self.hippocampus_left_soft >= threshold] = 1
        out[self.hippocampus_right_soft >= threshold] = 2
        return out

    def mask_volumes(self) -> dict[str, Volume]:
        """Each output as a ``Volume`` on the source grid (binary masks at the documented threshold)."""
        src = self.source
        return {
            "left_hippocampus": src.with_array(self.hippocampus_left_mask()),
            "right_hippocampus": src.with_array(self.hippocampus_right_mask()),
            "intracranial": src.with_array(self.brain_mask),
            "cerebrum": src.with_array(self.cerebrum_mask),
        }


# --------------------------------------------------------------------------------------------------
# The frame conversion (the one place)
# --------------------------------------------------------------------------------------------------
class _NativeGrid:
    """The input as the published method sees it: ``[i, j, k]`` data and an IJK->RAS affine."""

    _LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

    def __init__(self, volume: Volume) -> None:
        arr = np.asarray(volume.array)
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise TypeError(f"image voxels must be real numbers, got {arr.dtype}")
        # [k, j, i] C-order is the same memory as [i, j, k] F-order (what nibabel hands the original)
        # (C-contiguous first: a flipped or sliced view would have strides torch cannot take)
        self.data = np.ascontiguousarray(arr, dtype=np.float32).transpose(2, 1, 0)
        self.affine = self._LPS_TO_RAS @ volume.affine
        self.shape = tuple(int(n) for n in self.data.shape)

    @staticmethod
    def to_volume_order(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(2, 1, 0))


# --------------------------------------------------------------------------------------------------
# Small geometry helpers (column convention unless a name says otherwise)
# --------------------------------------------------------------------------------------------------
def _normalise_matrix(shape: tuple[int, ...]) -> np.ndarray:
    """voxel index -> normalised coordinate 2 i / (n - 1) - 1 per axis."""
    m = np.eye(4)
    for ax, n in enumerate(shape):
        m[ax, ax] = 2.0 / (n - 1)
        m[ax, 3] = -1.0
    return m


def _las_permutation(affine_ras: np.ndarray) -> np.ndarray:
    """P (4x4): LAS-box normalised coordinate u -> native normalised coordinate v (a signed axis
    permutation: nearest axis orientation, no resampling of an oblique rotation)."""
    ornt = nibo.io_orientation(affine_ras)
    p = np.zeros((4, 4))
    p[3, 3] = 1.0
    for n, (world_axis, sign) in enumerate(ornt):
        m = int(world_axis)
        p[n, m] = sign * _LAS_SIGNS[m]
    return p


def _apply_f32(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """points[..., 3] mapped by a 4x4 column-convention matrix, with the matrix cast to float32 first:
    the original's coordinate chains run this way, and the resampled masks depend on it."""
    lin = matrix[:3, :3].T.astype(np.float32)
    off = matrix[:3, 3].astype(np.float32)
    return points @ lin + off


def _linspace_grid(shape: tuple[int, int, int], dtype) -> list[np.ndarray]:
    return [np.linspace(-1, 1, n, dtype=dtype) for n in shape]


def _grid_sample(image: torch.Tensor, grid_axes_order: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Trilinear, zero padding, align_corners=True. ``grid_axes_order[..., c]`` holds the normalised
    coordinate along array axis c of ``image`` ([D, H, W]); grid_sample wants them reversed (x=W)."""
    g = torch.as_tensor(grid_axes_order, device=image.device).flip(-1)
    return F.grid_sample(image[None, None], g[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class HippodeepPipeline:
    """The three networks plus the SPEC.md pipeline. Build with ``from_state_dicts`` (or through
    ``model.HippodeepModel.load``, which finds and checks the weight files); ``run(volume)`` gives a
    ``HippodeepResult``."""

    def __init__(self, head: HeadNet, affine: AffineNet, hippo: HippoNet, device: torch.device) -> None:
        self.device = device
        # resampling runs where 3-D grid_sample exists (CPU, CUDA); the networks run on ``device``
        self.resample_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        self.head = head.to(device).eval()
        self.affine_net = affine.to(device).eval()
        self.hippo = hippo.to(device).eval()

    @classmethod
    def from_state_dicts(cls, head_sd: dict, affine_sd: dict, hippo_sd: dict, device: torch.device) -> "HippodeepPipeline":
        head, aff, hip = HeadNet(), AffineNet(), HippoNet()
        head.load_state_dict(head_sd, strict=True)
        aff.load_state_dict(affine_sd, strict=True)  # the published file has exactly these 18 tensors
        hip.load_state_dict(hippo_sd, strict=True)
        return cls(head, aff, hip, device)

    # --- the pipeline -----------------------------------------------------------------------------
    @torch.inference_mode()
    def run(
        self,
        volume: Volume,
        progress: Optional[ProgressFn] = None,
        check_head: Optional[Callable[[float, float], None]] = None,
        check_registration: Optional[Callable[[np.ndarray], None]] = None,
    ) -> HippodeepResult:
        """``check_head(etiv_mm3, cerebrum_mm3)`` and ``check_registration(native_ras_to_mni)`` may raise
        to stop early (a wrong kind of image costs only the head network)."""

        def step(name: str, frac: float) -> None:
            if progress is not None:
                progress(name, frac)

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        nat = _NativeGrid(volume)
        dev, rdev = self.device, self.resample_device

        # 5.1 z-score over the whole volume (background included), float32, population std
        d = nat.data
        d = (d - d.mean()) / d.std()
        d_t = torch.as_tensor(d, device=rdev)
        voxvol = float(abs(np.linalg.det(nat.affine)))
        perm = _las_permutation(nat.affine)

        # 5.3 the 64^3 LAS box spans the native field of view exactly
        step("head", 0.05)
        u64 = np.linspace(-1, 1, BOX).astype(np.float32)
        uu = np.stack(np.meshgrid(u64, u64, u64, indexing="ij"), axis=-1)  # LAS normalised, axis order
        box_grid = _apply_f32(uu, perm)  # exact: a signed permutation
        box = _grid_sample(d_t, box_grid)
        heads = self.head(box[None, None].to(dev))[0]  # [4, 64, 64, 64]
        timings["head_s"] = time.perf_counter() - t0

        # 5.4 intracranial mask; 5.5 cerebrum = largest 6-connected component of H2 > 0.01
        h0 = heads[0].to(rdev)
        h2 = heads[2].cpu().numpy().copy()
        labels, n_cc = scipy.ndimage.label(h2 > 0.01)
        if n_cc > 0:
            largest = int(np.bincount(labels.ravel())[1:].argmax()) + 1
            h2 *= labels == largest
        brain_mask, cerebrum_mask = self._box_to_native([h0, torch.as_tensor(h2, device=rdev)], nat.shape, perm)
        etiv = float(brain_mask.sum()) * voxvol
        cerebrum = float(cerebrum_mask.sum()) * voxvol
        timings["masks_s"] = time.perf_counter() - t0
        if check_head is not None:
            check_head(etiv, cerebrum)

        # 5.7 affine to template: input [H1 x H0, H3 x H0] with the raw probabilities
        step("registration", 0.3)
        t_mat = self.affine_net((heads[[1, 3]] * heads[0])[None])[0].cpu().numpy()  # float32
        # T is inverted in float32, on its transpose, as the original does: M then goes through
        # float32 casts, and a float64 inverse moves their last bits
        t_inv = np.linalg.inv(np.ascontiguousarray(t_mat.T)).T.astype(np.float64)
        w_nat = np.linalg.inv(perm) @ _normalise_matrix(nat.shape) @ np.linalg.inv(nat.affine)
        w_mni = _normalise_matrix((BOX, BOX, BOX)) @ np.linalg.inv(TEMPLATE_BOX_AFFINE)
        m = np.linalg.inv(w_mni) @ t_inv @ w_nat  # native RAS mm -> MNI mm
        timings["registration_s"] = time.perf_counter() - t0
        if check_registration is not None:
            check_registration(m)

        # 5.9 crop in template space, sampled from the full-resolution z-scored image
        step("hippocampus", 0.4)
        crop_to_native_norm = (
            perm @ w_nat @ np.linalg.inv(m) @ CROP_AFFINE @ np.linalg.inv(_normalise_matrix(CROP_SHAPE))
        )
        cu = _linspace_grid(CROP_SHAPE, np.float32)
        cgrid = np.stack(np.meshgrid(*cu, indexing="ij"), axis=-1)
        crop = _grid_sample(d_t, _apply_f32(cgrid, crop_to_native_norm)).cpu().numpy()
        crop -= crop.mean()
        crop /= crop.std()

        # 5.10 right side as it is, left side mirrored to look like a right one; one side at a time
        # (a batch of two doubles the peak memory for no gain in speed on a CPU)
        probs = np.stack(
            [
                self.hippo(torch.as_tensor(np.ascontiguousarray(side)[None, None], device=dev))[0, 0].cpu().numpy()
                for side in (crop[6:54, :, 2:66], crop[100:52:-1, :, 2:66])
            ]
        )  # [2, 44, 68, 60]: right, left
        # stretch 0.5..0.75 to 0.5..1, nothing at or below 0.5, then 0..255
        probs = np.clip((probs - 0.5) * 2 + 0.5, 0, 1) * (probs > 0.5)
        probs = np.clip(probs * 255, 0, 255)
        crop_r = np.zeros(CROP_SHAPE, np.float32)
        crop_l = np.zeros(CROP_SHAPE, np.float32)
        crop_r[8:52, 2:70, 4:64] = probs[0]
        crop_l[98:54:-1, 2:70, 4:64] = probs[1]  # hL voxel a -> crop index 98 - a
        timings["hippocampus_s"] = time.perf_counter() - t0

        # 5.11 back to the native grid, inside the box that the crop covers
        step("native", 0.8)
        start, size, crop_norm_pts = self._native_box_coordinates(nat, m)
        soft: dict[str, np.ndarray] = {}
        vols: dict[str, float] = {}
        for side, crop_side in (("left", crop_l), ("right", crop_r)):
            # the original hands grid_sample the crop transposed ([68, 72, 107]) and the box's
            # coordinates swapped to match; trilinear sums round differently per layout, so keep it
            img_t = torch.as_tensor(np.ascontiguousarray(crop_side.T), device=rdev)
            g = torch.as_tensor(np.ascontiguousarray(np.swapaxes(crop_norm_pts, 0, 2)), device=rdev)
            vals = F.grid_sample(img_t[None, None], g[None], mode="bilinear", padding_mode="zeros", align_corners=True)
            dn = vals[0, 0].permute(2, 1, 0).cpu().numpy()
            dn[dn < SOFT_NOISE_FLOOR] = 0
            vols[side] = float(dn.sum()) / 255.0 * voxvol  # float32 sum, as published
            full = np.zeros(nat.shape, np.uint8)
            full[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]] = dn.astype(np.uint8)
            soft[side] = _NativeGrid.to_volume_order(full)
        timings["native_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t0
        step("done", 1.0)

        return HippodeepResult(
            source=volume,
            brain_mask=_NativeGrid.to_volume_order(brain_mask),
            cerebrum_mask=_NativeGrid.to_volume_order(cerebrum_mask),
            hippocampus_left_soft=soft["left"],
            hippocampus_right_soft=soft["right"],
            etiv_mm3=etiv,
            cerebrum_mm3=cerebrum,
            hippocampus_left_mm3=vols["left"],
            hippocampus_right_mm3=vols["right"],
            voxel_volume_mm3=voxvol,
            native_ras_to_mni=m,
            template_transform=t_mat.astype(np.float64),
            hippocampus_box_start_ijk=tuple(int(x) for x in start),
            hippocampus_box_size_ijk=tuple(int(x) for x in size),
            timings_s=timings,
        )

    # --- pieces -----------------------------------------------------------------------------------
    def _box_to_native(self, maps: list[torch.Tensor], shape: tuple[int, int, int], perm: np.ndarray) -> list[np.ndarray]:
        """Resample 64^3 LAS-box maps onto the native grid and threshold at 0.5 (uint8 0/1, [i, j, k]).

        The native normalised coordinates are float16 linspace values, as in the original: SPEC.md
        measured that float32 coordinates move 119 mask voxels of the example (eTIV +0.007 %)."""
        c16 = _linspace_grid(shape, np.float16)
        # u = P^T v: each LAS axis takes one native axis' coordinate, possibly negated (exact)
        p_t = perm[:3, :3].T
        outs = [np.empty(shape, np.uint8) for _ in maps]
        slab = max(1, _SLAB_VOXELS // (shape[1] * shape[2]))
        cj = c16[1].astype(np.float32)
        ck = c16[2].astype(np.float32)
        for i0 in range(0, shape[0], slab):
            ci = c16[0][i0 : i0 + slab].astype(np.float32)
            vv = np.stack(np.meshgrid(ci, cj, ck, indexing="ij"), axis=-1)
            uu = (vv @ p_t.T.astype(np.float32)).astype(np.float32)
            g = torch.as_tensor(uu, device=self.resample_device)
            for mp, out in zip(maps, outs):
                out[i0 : i0 + slab] = (_grid_sample(mp, g) > 0.5).cpu().numpy()
        return outs

    @staticmethod
    def _native_box_coordinates(nat: _NativeGrid, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The native voxel box covering the crop, and for each of its voxels the crop's normalised
        coordinate (float32 chain native voxel -> RAS -> MNI -> crop voxel -> normalised, as the original)."""
        n = np.array(CROP_SHAPE) - 1
        corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], dtype=np.int64)
        # the original maps the integer corners with float32-cast matrices but float64 arithmetic
        pts = _apply_f32(corners, CROP_AFFINE)
        pts = _apply_f32(pts, np.linalg.inv(m))
        pts = _apply_f32(pts, np.linalg.inv(nat.affine))
        for ax in range(3):
            np.clip(pts[:, ax], 0, nat.shape[ax], out=pts[:, ax])
        start = np.floor(pts.min(0)).astype(int)
        size = np.ceil(pts.max(0)).astype(int) - start
        ind = np.indices(tuple(size)).astype(np.float32) + start.reshape(3, 1, 1, 1).astype(np.float32)
        xyz = _apply_f32(np.moveaxis(ind, 0, -1), nat.affine)
        xyz = _apply_f32(xyz, m)
        ijk = _apply_f32(xyz, np.linalg.inv(CROP_AFFINE))
        for ax in range(3):
            ijk[..., ax] /= CROP_SHAPE[ax] - 1
        ijk = ijk * 2 - 1
        return start, size, ijk
