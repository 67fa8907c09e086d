"""LPS <-> RAS and numpy <-> VTK: the only place the library meets Slicer's RAS world frame."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: diag(-1, -1, 1, 1): flips x and y; its own inverse
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(point: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(point, dtype=np.float64)
    return p * np.array([-1.0, -1.0, 1.0])


def ras_to_lps(point: Sequence[float] | np.ndarray) -> np.ndarray:
    return lps_to_ras(point)  # the flip is an involution


def ijk_to_ras_matrix(affine_lps: np.ndarray) -> Any:
    import vtk

    m = vtk.vtkMatrix4x4()
    ras = LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ras[r, c]))
    return m


def affine_lps_from_node(node: Any) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    return LPS_TO_RAS @ ras


def image_data_from_array(array: np.ndarray) -> Any:
    """vtkImageData (origin 0, spacing 1: geometry lives in the node's IJKToRAS) from [k, j, i]."""
    import vtk
    from vtk.util import numpy_support

    arr = np.ascontiguousarray(array)
    nk, nj, ni = arr.shape
    img = vtk.vtkImageData()
    img.SetDimensions(ni, nj, nk)
    vtk_arr = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    img.GetPointData().SetScalars(vtk_arr)
    return img


def array_from_image_data(img: Any) -> np.ndarray:
    from vtk.util import numpy_support

    ni, nj, nk = img.GetDimensions()
    flat = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
    return flat.reshape(nk, nj, ni).copy()
