"""Offscreen slice views through Slicer's own displayable managers (segmentation outlines/fill, markups
lines with their measurement labels), for tests, key images and documentation screenshots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .context import SceneContext
from .convert import lps_to_ras, ras_to_lps

_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")


@dataclass
class SliceImage:
    rgb: np.ndarray  # [row, column, 3] uint8, row 0 at the top
    xy_to_ras: np.ndarray  # 4x4, slice-view pixel (x right, y up from the bottom-left) -> RAS

    def lps_to_pixel(self, lps: Sequence[float]) -> tuple[int, int]:
        """(row, column) in ``rgb`` of an LPS point lying in the slice plane."""
        ras = np.append(lps_to_ras(lps), 1.0)
        x, y, _, _ = np.linalg.inv(self.xy_to_ras) @ ras
        return int(round(self.rgb.shape[0] - 1 - y)), int(round(x))

    def pixel_to_lps(self, row: int, col: int) -> np.ndarray:
        y = self.rgb.shape[0] - 1 - row
        return ras_to_lps((self.xy_to_ras @ np.array([col, y, 0.0, 1.0]))[:3])

    def save_png(self, path: str | Path) -> Path:
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.rgb).save(path)
        return path


class OffscreenSliceView:
    """One slice view (render window, displayable managers, slice logic) bound to a scene."""

    def __init__(self, ctx: SceneContext, name: str = "Red", size: tuple[int, int] = (512, 512)) -> None:
        import slicer
        import vtk

        # no reference back to ctx: ctx.views holds the view, and a cycle would leave the teardown
        # order to the garbage collector (see SceneContext.close)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(ctx.app_logic)
        for m in _MANAGERS:
            if not factory.IsDisplayableManagerRegistered(m):
                factory.RegisterDisplayableManager(m)
        # Two layers, as in Slicer's slice view: the slice image below, the displayable managers'
        # overlays above. In one renderer the segment fill (a 2D image mapper, which writes its
        # alpha-weighted colour without blending) would replace the image instead of tinting it.
        self.image_renderer = vtk.vtkRenderer()
        self.image_renderer.SetLayer(0)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetLayer(1)
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetNumberOfLayers(2)
        self.window.AddRenderer(self.image_renderer)
        self.window.AddRenderer(self.renderer)
        self.window.SetSize(*size)
        # the markups widgets need an interactor even when nobody interacts
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        self.group.Initialize(factory, self.renderer)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(ctx.app_logic)
        self.logic.SetMRMLScene(ctx.scene)
        ctx.app_logic.GetSliceLogics().AddItem(self.logic)
        self.slice_node = self.logic.AddSliceNode(name)
        self.group.SetMRMLDisplayableNode(self.slice_node)
        # the slice image itself: in Slicer a CTK light-box manager draws it; here a plain 2D actor
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(self.mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        self.image_renderer.AddViewProp(actor)
        self.size = size

    def close(self, app_logic: Any) -> None:
        """Detach from the scene and the application logic (before the scene's logics go)."""
        import slicer

        app_logic.GetSliceLogics().RemoveItem(self.logic)
        self.group.SetMRMLDisplayableNode(None)
        self.logic.SetMRMLScene(None)
        self.logic.SetMRMLApplicationLogic(None)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        if factory.GetMRMLApplicationLogic() is app_logic:  # the factory is a process-wide singleton
            factory.SetMRMLApplicationLogic(None)
        self.window.Finalize()

    def render(
        self,
        background: Any,
        orientation: str = "Axial",
        center_lps: Optional[Sequence[float]] = None,
        field_of_view_mm: Optional[float] = None,
    ) -> SliceImage:
        import vtk
        from vtk.util import numpy_support

        self.slice_node.SetOrientation(orientation)
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(background.GetID())
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        if field_of_view_mm:
            fov = list(self.slice_node.GetFieldOfView())
            aspect = fov[1] / fov[0]
            self.slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm * aspect, fov[2])
        if center_lps is not None:
            ras = lps_to_ras(center_lps)
            self.slice_node.JumpSliceByCentering(float(ras[0]), float(ras[1]), float(ras[2]))
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        img = grab.GetOutput()
        w, h, _ = img.GetDimensions()
        rgb = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].copy()
        m = self.slice_node.GetXYToRAS()
        xy_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        return SliceImage(rgb=rgb, xy_to_ras=xy_to_ras)


def render_slice(
    ctx: SceneContext,
    background: Any,
    orientation: str = "Axial",
    center_lps: Optional[Sequence[float]] = None,
    size: tuple[int, int] = (512, 512),
    field_of_view_mm: Optional[float] = None,
) -> SliceImage:
    """Render one slice of ``background`` with every visible segmentation and markup over it."""
    key = f"{size[0]}x{size[1]}"
    view = ctx.views.get(key)
    if view is None:
        view = ctx.views[key] = OffscreenSliceView(ctx, name=f"Offscreen{len(ctx.views)}", size=size)
    return view.render(background, orientation, center_lps, field_of_view_mm)
