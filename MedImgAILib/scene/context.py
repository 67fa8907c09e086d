"""A scene set up the way the Slicer application sets one up, so that module logics behave as in Slicer.

Inside Slicer, ``SceneContext.from_slicer_app()`` wraps the application's scene and logics instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# slicer-core renders through EGL without a display; harmless inside the application.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


@dataclass(eq=False)
class SceneContext:
    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)
    #: offscreen slice views created on demand by ``render_slice``, by size
    views: dict[str, Any] = field(default_factory=dict)
    #: made here (``new_scene``): torn down here, by :meth:`close` or when dropped; never the
    #: application's own scene
    owned: bool = False

    def close(self) -> None:
        """Tear the scene down in a fixed order: slice views, then the module logics, then the scene.

        Left to the garbage collector, the parts went in any order, and the Colors logic's destructor
        (which removes its color nodes from the scene it still had) sent node events to a slice logic
        that was already gone: a segfault in vtkMRMLSliceLogic::ProcessMRMLLogicsEvents, seen as an
        occasional crash at the exit of the test process. Idempotent; the context is unusable after."""
        if not self.owned or self.scene is None:
            return
        for view in self.views.values():
            view.close(self.app_logic)
        self.views.clear()
        for logic in reversed(list(self.logics.values())):
            logic.SetMRMLScene(None)  # detached first: no logic reacts to the scene's clearing below
        self.logics.clear()
        self.app_logic.SetMRMLScene(None)
        self.scene.Clear(1)
        self.scene = None

    def __enter__(self) -> "SceneContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the VTK modules may be gone already
            pass

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
    return SceneContext(scene=scene, app_logic=app, logics=logics, owned=True)
