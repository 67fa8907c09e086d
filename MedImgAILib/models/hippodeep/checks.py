"""Is this a T1-weighted MR of the head? Checks before the model runs (header and geometry) and after
(what the head network found), so that a CT, a chest, a T2 or FLAIR series is refused with a message
that says why, instead of producing volumes that look like numbers.

The thresholds are deliberately wide: they catch the wrong kind of image, not unusual anatomy.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

import numpy as np

from ...errors import ModelError
from ...volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import HippodeepResult


class UnsupportedInputError(ModelError):
    """The image is not what the model was made for (not MR, not T1-weighted, not a head, not 3D)."""

    kind = "unsupported-input"


#: series-description / protocol / sequence words that name a contrast other than T1
_NOT_T1_WORDS = re.compile(
    r"(?<![A-Z0-9])(T2|T2W|T2\*|T2STAR|FLAIR|DIR|STIR|PD|PDW|DWI|DTI|ADC|TRACE|SWI|SWAN|BOLD|FMRI|EPI|"
    r"PERFUSION|PWI|DSC|ASL|TOF|MRA|ANGIO|LOCALI[SZ]ER|SCOUT|SURVEY)(?![A-Z0-9])"
)
#: words that say the series is T1-weighted whatever else it names (T1-FLAIR, MPRAGE, IR-SPGR)
_T1_WORDS = re.compile(r"(?<![A-Z0-9])(T1|T1W|MPRAGE|MP RAGE|MPR|SPGR|FSPGR|BRAVO|TFE|MP2RAGE|VIBE)(?![A-Z0-9])")
_BODY_PARTS_HEAD = {"HEAD", "BRAIN", "SKULL", "HEADNECK", "NECKHEAD", "CEREBRUM", ""}

#: a T1 sequence has a short echo (MPRAGE/SPGR ~2-5 ms, SE T1 ~10-20 ms); T2/PD/FLAIR use longer ones
MAX_T1_ECHO_TIME_MS = 30.0
#: MPRAGE/IR-SPGR use TI ~ 400-1200 ms; FLAIR uses ~1500-2800 ms (to null CSF), STIR ~150-250 ms
MAX_T1_INVERSION_TIME_MS = 1500.0
MIN_EXTENT_MM = 100.0  # the whole head must be in the field of view
MAX_SPACING_MM = 3.0  # coarser than this, hippocampi are a handful of voxels
PROTOCOL_MAX_SPACING_MM = 1.5  # the protocol (mr-brain-3d-t1-volumetric) asks for ~1-1.5 mm
MIN_SLICES = 32
#: adult intracranial volume is ~1.1-1.9 L; children and extreme heads stay inside this
ETIV_RANGE_MM3 = (700_000.0, 2_600_000.0)
#: the fitted native -> template transform must be a plausible head-to-head scaling
SCALE_RANGE = (0.55, 1.8)
#: cerebrum / intracranial volume: ~0.8-0.9 in a head T1 (cerebellum, brainstem and CSF make the rest)
CEREBRUM_FRACTION_RANGE = (0.6, 0.95)
#: below this on both sides the network found no hippocampus at all: not a head T1
MIN_HIPPOCAMPUS_ANY_SIDE_MM3 = 300.0
#: per-side hippocampus volume outside this is reported as a warning (atrophy is real, so no refusal)
HIPPOCAMPUS_WARN_RANGE_MM3 = (1000.0, 6500.0)


def _series_name(volume: Volume) -> str:
    if volume.series_instance_uid:
        return f"series {volume.series_instance_uid}"
    source = volume.extra.get("source_path")
    return f"{source}" if source else "the image"


def _tagged(volume: Volume, dotted: str):
    md = volume.metadata
    if md is None:
        return None
    try:
        return md.get(dotted).value
    except (AttributeError, KeyError, ValueError):
        return None


def check_input(volume: Volume) -> list[str]:
    """Refuse what cannot be a 3D T1 of the head (raises ``UnsupportedInputError``); returns warnings
    for what is usable but outside the protocol."""
    name = _series_name(volume)
    warnings: list[str] = []

    modality = (volume.modality or _tagged(volume, "series.modality") or "").upper()
    if modality and modality != "MR":
        raise UnsupportedInputError(
            f"{name} has modality {modality}; mr-hippocampus needs a T1-weighted MR of the head (modality MR)"
        )

    texts = {
        "series description": _tagged(volume, "series.series_description"),
        "protocol name": _tagged(volume, "series.protocol_name"),
        "sequence name": _tagged(volume, "acquisition.sequence_name"),
    }
    for what, text in texts.items():
        if text:
            upper = str(text).upper().replace("-", " ").replace("_", " ")
            m = _NOT_T1_WORDS.search(upper)
            if m and not _T1_WORDS.search(upper):
                raise UnsupportedInputError(
                    f"{name}: {what} {str(text)!r} names a {m.group(1)} series; mr-hippocampus needs a "
                    f"T1-weighted 3D series (e.g. MPRAGE, IR-SPGR, BRAVO)"
                )
    te = _tagged(volume, "acquisition.echo_time_ms")
    if te is not None and float(te) > MAX_T1_ECHO_TIME_MS:
        raise UnsupportedInputError(
            f"{name}: echo time {float(te):g} ms is too long for a T1-weighted series (T2/PD-weighted?); "
            f"mr-hippocampus needs a T1-weighted series (echo time <= {MAX_T1_ECHO_TIME_MS:g} ms)"
        )
    ti = _tagged(volume, "acquisition.inversion_time_ms")
    if ti is not None and float(ti) > MAX_T1_INVERSION_TIME_MS:
        raise UnsupportedInputError(
            f"{name}: inversion time {float(ti):g} ms is a FLAIR-type inversion; mr-hippocampus needs a "
            f"T1-weighted series (inversion time <= {MAX_T1_INVERSION_TIME_MS:g} ms, e.g. MPRAGE)"
        )
    body = _tagged(volume, "series.body_part_examined")
    if body and str(body).upper().replace(" ", "") not in _BODY_PARTS_HEAD:
        raise UnsupportedInputError(
            f"{name}: body part examined is {body}; mr-hippocampus needs an MR of the head"
        )

    # intensities: MR magnitude images are not negative; CT in HU is mostly -1000 (air)
    arr = np.asarray(volume.array)
    if arr.size and (np.issubdtype(arr.dtype, np.signedinteger) or np.issubdtype(arr.dtype, np.floating)):
        low = float(np.percentile(arr[:: max(1, arr.shape[0] // 16)], 5))
        if low < -100.0:
            raise UnsupportedInputError(
                f"{name}: 5 % of voxels are below {low:.0f}, which looks like CT Hounsfield units, not MR "
                f"magnitude; mr-hippocampus needs a T1-weighted MR of the head"
            )
    if arr.size == 0 or float(arr.max()) == float(arr.min()):
        raise UnsupportedInputError(f"{name} has constant intensity; there is no image to analyse")

    # geometry: a 3D volume that holds a whole head
    shape = volume.shape_ijk
    if min(shape) < MIN_SLICES:
        raise UnsupportedInputError(
            f"{name} is {shape[0]}x{shape[1]}x{shape[2]} voxels; mr-hippocampus needs a 3D volume "
            f"(at least {MIN_SLICES} voxels along every axis), not a 2D or thin-slab series"
        )
    spacing = np.array(volume.spacing)
    if spacing.max() > MAX_SPACING_MM:
        raise UnsupportedInputError(
            f"{name} has voxels of {spacing[0]:.2f} x {spacing[1]:.2f} x {spacing[2]:.2f} mm; mr-hippocampus "
            f"needs a 3D T1 with voxels of at most {MAX_SPACING_MM:g} mm (the protocol asks for 1-1.5 mm)"
        )
    if spacing.max() > PROTOCOL_MAX_SPACING_MM + 1e-6:
        warnings.append(
            f"voxels of {spacing.max():.2f} mm are coarser than the protocol's 1-1.5 mm (mr-brain-3d-t1-volumetric); "
            f"volumes are less precise"
        )
    extent = spacing * (np.array(shape) - 1)
    if extent.min() < MIN_EXTENT_MM:
        raise UnsupportedInputError(
            f"{name} covers only {extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm; mr-hippocampus needs "
            f"the whole head in the field of view (at least {MIN_EXTENT_MM:g} mm along every axis)"
        )

    return warnings


def check_head(etiv_mm3: float, cerebrum_mm3: float, volume: Volume) -> None:
    """After the head network: is there a plausible skull content? (Runs before the hippocampus
    step, so a wrong image is refused early.)"""
    name = _series_name(volume)
    lo, hi = ETIV_RANGE_MM3
    if not lo <= etiv_mm3 <= hi:
        raise UnsupportedInputError(
            f"{name}: the head network found an intracranial volume of {etiv_mm3 / 1000:.0f} cm3 "
            f"(expected {lo / 1000:.0f}-{hi / 1000:.0f} cm3); the image does not look like a T1-weighted MR "
            f"of a whole head"
        )
    frac = cerebrum_mm3 / etiv_mm3
    if not CEREBRUM_FRACTION_RANGE[0] <= frac <= CEREBRUM_FRACTION_RANGE[1]:
        raise UnsupportedInputError(
            f"{name}: the cerebrum is {frac:.2f} of the intracranial volume (expected "
            f"{CEREBRUM_FRACTION_RANGE[0]}-{CEREBRUM_FRACTION_RANGE[1]}); the image does not look like a "
            f"T1-weighted MR of a whole head"
        )


def check_registration(native_ras_to_mni: np.ndarray, volume: Volume) -> None:
    """After the affine network: is the head-to-template fit a plausible scaling?"""
    scales = np.linalg.svd(np.asarray(native_ras_to_mni)[:3, :3], compute_uv=False)
    if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        raise UnsupportedInputError(
            f"{_series_name(volume)}: the fit to the brain template scales the head by "
            f"{scales.min():.2f}-{scales.max():.2f} (expected {SCALE_RANGE[0]}-{SCALE_RANGE[1]}); the image does "
            f"not look like a T1-weighted MR of a whole head"
        )


def check_output(result: "HippodeepResult", volume: Optional[Volume] = None) -> list[str]:
    """Refuse results that show the input was not a head T1; return warnings for unusual but possible
    values. (``check_head`` and ``check_registration`` also run inside the pipeline, earlier.)"""
    vol = volume if volume is not None else result.source
    check_head(result.etiv_mm3, result.cerebrum_mm3, vol)
    check_registration(result.native_ras_to_mni, vol)
    name = _series_name(vol)
    if max(result.hippocampus_left_mm3, result.hippocampus_right_mm3) < MIN_HIPPOCAMPUS_ANY_SIDE_MM3:
        raise UnsupportedInputError(
            f"{name}: no hippocampus found (left {result.hippocampus_left_mm3:.0f} mm3, right "
            f"{result.hippocampus_right_mm3:.0f} mm3); the image does not look like a T1-weighted MR of a head"
        )
    warnings: list[str] = []
    wlo, whi = HIPPOCAMPUS_WARN_RANGE_MM3
    for side, v in (("left", result.hippocampus_left_mm3), ("right", result.hippocampus_right_mm3)):
        if not wlo <= v <= whi:
            warnings.append(
                f"{side} hippocampus {v:.0f} mm3 is outside {wlo:.0f}-{whi:.0f} mm3: check the segmentation"
            )
    return warnings
