"""Saving and reloading a review scene as a Medical Reality Bundle (.mrb), as Slicer does."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .context import SceneContext, new_scene

_STORABLE = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode",
             "vtkMRMLMarkupsLineNode", "vtkMRMLTableNode")


def save_mrb(ctx: SceneContext, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for cls in _STORABLE:
        nodes = ctx.scene.GetNodesByClass(cls)
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetStorageNode() is None:
                node.AddDefaultStorageNode()
    tmp = path.with_name(f"{path.stem}-partial.mrb")
    if not ctx.scene.WriteToMRB(str(tmp)):
        tmp.unlink(missing_ok=True)
        raise OSError(f"Slicer could not write the scene to {path}")
    tmp.replace(path)
    return path


def load_mrb(path: str | Path) -> SceneContext:
    import slicer

    ctx = new_scene()
    cache = Path(tempfile.mkdtemp(prefix="medimgai-mrb-cache-"))
    remote = slicer.vtkMRMLRemoteIOLogic()
    remote.SetMRMLScene(ctx.scene)
    remote.GetCacheManager().SetRemoteCacheDirectory(str(cache))
    remote.AddDataIOToScene()
    io_manager = slicer.vtkDataIOManagerLogic()
    io_manager.SetMRMLApplicationLogic(ctx.app_logic)
    io_manager.SetAndObserveDataIOManager(ctx.scene.GetDataIOManager())
    ctx.logics["_remote_io"] = remote
    ctx.logics["_data_io"] = io_manager
    if not ctx.scene.ReadFromMRB(str(path)):
        raise OSError(f"Slicer could not read the scene {path}")
    return ctx


def first_node(ctx: SceneContext, cls: str, name: str | None = None) -> Any:
    nodes = ctx.scene.GetNodesByClass(cls)
    for i in range(nodes.GetNumberOfItems()):
        n = nodes.GetItemAsObject(i)
        if name is None or n.GetName() == name:
            return n
    return None
