"""A scene set up the way the Slicer application sets one up, so that module logics behave as in Slicer.

Inside Slicer, ``SceneContext.from_slicer_app()`` wraps the application's scene and logics instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# slicer-core renders through EGL without a display; harmless inside the application.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


@dataclass
class SceneContext:
    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)
    #: offscreen slice views created on demand by ``render_slice``, by size
    views: dict[str, Any] = field(default_factory=dict)

    @property
    def segmentations(self) -> Any:
        return self.logics["Segmentations"]

    @property
    def markups(self) -> Any:
        return self.logics["Markups"]

    @classmethod
    def from_slicer_app(cls) -> "SceneContext":  # pragma: no cover - needs the Slicer application
        import slicer

        logics = {
            "Segmentations": slicer.modules.segmentations.logic(),
            "Markups": slicer.modules.markups.logic(),
            "Volumes": slicer.modules.volumes.logic(),
        }
        return cls(scene=slicer.mrmlScene, app_logic=slicer.app.applicationLogic(), logics=logics)


def new_scene() -> SceneContext:
    """A fresh headless scene with the Colors, Volumes, Segmentations, Markups, Tables and Subject
    Hierarchy logics registered on the application logic (FIELD-NOTES: register Colors or volume display
    setup logs errors)."""
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    if app.GetSliceLogics() is None:
        app.SetSliceLogics(vtk.vtkCollection())
    logics: dict[str, Any] = {}
    for name, cls in (
        ("Colors", slicer.vtkSlicerColorLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("Markups", slicer.vtkSlicerMarkupsLogic),
        ("Tables", slicer.vtkSlicerTablesLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ):
        logic = cls()
        if hasattr(logic, "SetMRMLApplicationLogic"):
            logic.SetMRMLApplicationLogic(app)
        # Colors logic looks for its files under the application's home; without one it still builds
        # the built-in color tables, which is all the scene needs, so its complaint is silenced.
        if name == "Colors":
            prev = vtk.vtkObject.GetGlobalWarningDisplay()
            vtk.vtkObject.GlobalWarningDisplayOff()
            logic.SetMRMLScene(scene)
            vtk.vtkObject.SetGlobalWarningDisplay(prev)
        else:
            logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    return SceneContext(scene=scene, app_logic=app, logics=logics)
