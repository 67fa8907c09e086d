"""The MRML boundary: AnalysisResult <-> 3D Slicer nodes, and offscreen slice rendering.

Depends on Slicer's MRML only (the real application's ``slicer`` module, or the ``slicer-core`` pip
package headless); never on Qt. LPS<->RAS conversion happens in ``convert`` and nowhere else.
Importing this package does not import ``slicer``: call ``new_scene()`` or pass a ``SceneContext``.
"""

from .convert import lps_to_ras, ras_to_lps
from .build import ResultNodes, SegmentSpec, build_result_nodes
from .context import SceneContext, new_scene
from .corrections import Correction, CorrectedResult, read_corrections
from .render import render_slice

__all__ = [
    "SceneContext",
    "new_scene",
    "SegmentSpec",
    "ResultNodes",
    "build_result_nodes",
    "Correction",
    "CorrectedResult",
    "read_corrections",
    "render_slice",
    "lps_to_ras",
    "ras_to_lps",
]
