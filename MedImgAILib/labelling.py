"""Connected-component labelling with face connectivity (6-connected in 3D, 4-connected in 2D, or
4-connected within each slice of a 3D stack): scipy.ndimage's labels, computed by cc3d
(connected-components-3d) when it is installed.

Both number components in raster (C) order of their first voxel, so the label arrays are equal, not
just equivalent (Testing/unit/test_labelling.py checks it on random masks): a caller that picks "the
largest component, the first of equal ones" gets the same component either way. cc3d's two-pass
labelling with a decision tree is about 3x faster than scipy's on the image-quality stage's 3D masks
(6 M voxels: ~15 ms against ~45 ms here), which matters in a stage that runs for every series.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

try:  # optional accelerator: scipy gives the same labels
    import cc3d as _cc3d
except ImportError:  # pragma: no cover - exercised by the tests with use_cc3d(False)
    _cc3d = None

_USE_CC3D = _cc3d is not None

#: 4-connected in-plane neighbours only, as a 3D structure (scipy's form of ``label_inplane``)
_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = ndi.generate_binary_structure(2, 1)


def use_cc3d(on: bool) -> bool:
    """Switch the cc3d path on or off (tests compare both); returns the previous setting. Turning it on
    without cc3d installed leaves it off."""
    global _USE_CC3D
    before = _USE_CC3D
    _USE_CC3D = bool(on) and _cc3d is not None
    return before


def label_faces(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndi.label(mask)`` of a 2D or 3D boolean mask (face connectivity) as an intp array (what
    ``np.bincount`` takes without a copy) and the number of components."""
    mask = np.asarray(mask, dtype=bool)
    if _USE_CC3D and mask.ndim in (2, 3) and mask.size:
        lab, n = _cc3d.connected_components(mask, connectivity=6 if mask.ndim == 3 else 4,
                                            out_dtype=np.uint64, return_N=True)
        return lab.view(np.intp), int(n)
    return ndi.label(mask, output=np.intp)


def label_inplane(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Components 4-connected within each slice [k] of a 3D mask, numbered across the whole stack in
    raster order (``ndi.label`` with an in-plane structure), as intp."""
    mask = np.asarray(mask, dtype=bool)
    nk, nj, ni = mask.shape
    if _USE_CC3D and mask.size:
        # one 2D labelling of the slices stacked row-wise, a background row between slices so that
        # nothing connects across them; the raster order is the stack's
        stacked = np.zeros((nk, nj + 1, ni), dtype=bool)
        stacked[:, :nj] = mask
        lab, n = _cc3d.connected_components(stacked.reshape(nk * (nj + 1), ni), connectivity=4,
                                            out_dtype=np.uint64, return_N=True)
        return lab.reshape(nk, nj + 1, ni)[:, :nj].view(np.intp), int(n)
    return ndi.label(mask, structure=_INPLANE, output=np.intp)
