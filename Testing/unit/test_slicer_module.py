"""The Slicer module checked without Slicer (no Qt here): it compiles, its .ui and parameter node agree,
it holds wiring only (everything it takes from MedImgAILib exists there), and the extension's CMake
packages every script and resource.

The module itself runs inside Slicer through its ScriptedLoadableModuleTest (MedImgAITest).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedImgAI"
MODULE_PY = MODULE_DIR / "MedImgAI.py"
UI = MODULE_DIR / "Resources" / "UI" / "MedImgAI.ui"


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text())


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _ui_widgets() -> dict[str, dict[str, str]]:
    """widget name -> {"class": ..., "param": SlicerParameterName or ""}"""
    out = {}
    for w in ET.parse(UI).iter("widget"):
        param = ""
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                param = p.findtext("string") or ""
        out[w.get("name")] = {"class": w.get("class"), "param": param}
    return out


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in MODULE_DIR.rglob("*.py")))
def test_every_module_file_compiles(path, tmp_path):
    py_compile.compile(str(REPO / path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_module_follows_the_template(tree):
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"MedImgAI", "MedImgAIWidget", "MedImgAILogic", "MedImgAITest", "MedImgAIParameterNode"} <= classes
    decorators = [ast.unparse(d) for d in _class(tree, "MedImgAIParameterNode").decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    test_methods = {n.name for n in _class(tree, "MedImgAITest").body if isinstance(n, ast.FunctionDef)}
    assert "test_phantom_analyze_review_export" in test_methods
    # the self-test asserts, it does not only display "passed"
    src = ast.unparse(_class(tree, "MedImgAITest"))
    assert src.count("self.assert") >= 15


def test_the_ui_parses_and_holds_every_widget_the_code_uses(tree):
    widgets = _ui_widgets()
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
            and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert len(used) > 30
    missing = sorted(used - set(widgets))
    assert not missing, f"MedImgAI.py uses widgets the .ui lacks: {missing}"


def test_every_parameter_in_the_ui_is_a_parameter_node_field_and_back(tree):
    fields = {n.target.id: ast.unparse(n.annotation) for n in _class(tree, "MedImgAIParameterNode").body
              if isinstance(n, ast.AnnAssign)}
    params = {w["param"]: w["class"] for w in _ui_widgets().values() if w["param"]}
    assert set(params) == set(fields), (sorted(params), sorted(fields))
    assert set(params) == {"pacsNode", "inputVolume", "modelId", "device", "clinicalContext", "observer",
                           "outputDirectory", "sendToPacs", "keyImages"}
    # each field's type is one a Slicer GUI connector binds to that widget class
    expected = {"QComboBox": "Annotated[str, DynamicChoices()]", "QLineEdit": "str", "QCheckBox": "bool",
                "ctkPathLineEdit": "Path", "qMRMLNodeComboBox": "vtkMRMLScalarVolumeNode"}
    for name, cls in params.items():
        assert fields[name] == expected[cls], (name, cls, fields[name])


def _library_references(tree: ast.Module) -> list[tuple[str, str]]:
    """(module, name) for every ``from MedImgAILib... import name`` and ``import MedImgAILib.x``."""
    refs = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "MedImgAILib":
            refs += [(n.module, a.name) for a in n.names]
        elif isinstance(n, ast.Import):
            refs += [(a.name, "") for a in n.names if a.name.split(".")[0] == "MedImgAILib"]
    return refs


def test_everything_the_module_imports_from_the_library_exists(tree):
    refs = _library_references(tree)
    assert len(refs) >= 15, refs
    for module, name in refs:
        mod = importlib.import_module(module)
        if name:
            assert hasattr(mod, name), f"MedImgAI.py imports {name} from {module}, which does not define it"


def _attrs_used_on(tree: ast.Module, *receivers: str) -> set[str]:
    """Attribute names read on ``session`` / ``self.session`` / ... anywhere in the module."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and ast.unparse(n.value) in receivers:
            out.add(n.attr)
    return out


def _instance_attrs(cls) -> set[str]:
    import inspect

    names = set(dir(cls))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    src = ast.parse(inspect.getsource(cls))
    names |= {t.attr for n in ast.walk(src) if isinstance(n, (ast.Assign, ast.AnnAssign))
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
              if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
    return names


def test_what_the_widget_calls_on_library_objects_exists(tree):
    from MedImgAILib.scene.jobs import AnalysisJob, JobStatus
    from MedImgAILib.scene.session import ExportOutcome, ReviewSession

    checks = [
        (ReviewSession, ("session", "self.session")),
        (AnalysisJob, ("job", "self._job")),
        (JobStatus, ("st", "job.status", "self._job.status")),
        (ExportOutcome, ("outcome", "out")),
    ]
    for cls, receivers in checks:
        used = _attrs_used_on(tree, *receivers)
        assert used, (cls, receivers)
        missing = sorted(used - _instance_attrs(cls))
        assert not missing, f"MedImgAI.py uses {cls.__name__}.{missing}, which do not exist"


def test_the_widget_holds_wiring_only(tree):
    """No DICOM, networking, numerics or file formats in the module file: those are the library's."""
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    forbidden = {"pynetdicom", "highdicom", "SimpleITK", "nibabel", "scipy", "torch", "monai", "subprocess", "sqlalchemy"}
    assert not imported & forbidden, imported & forbidden
    widget = _class(tree, "MedImgAIWidget")
    assert len(ast.unparse(widget).splitlines()) < 400
    # every button is connected to a handler
    src = MODULE_PY.read_text()
    for name, w in _ui_widgets().items():
        if w["class"] == "QPushButton":
            assert f"self.ui.{name}.connect(" in src, f"{name} is not connected"


def test_dependencies_are_installed_from_the_requirements_without_touching_slicer_numpy(tree):
    reqs = (MODULE_DIR / "Resources" / "requirements.txt").read_text()
    names = {re.split(r"[<>=!~\[ ]", line.strip())[0].lower() for line in reqs.splitlines()
             if line.strip() and not line.startswith("#")}
    assert not names & {"numpy", "simpleitk", "torch"}, names & {"numpy", "simpleitk", "torch"}
    logic = ast.unparse(_class(tree, "MedImgAILogic"))
    assert "pip_install" in logic and "requirements.txt" in logic and "'-c'" in logic
    assert "PyTorchUtils" in logic and "testingEnabled" in logic and "confirmOkCancelDisplay" in logic
    # each pip requirement the module checks for is in requirements.txt
    req_map = next(n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "REQUIRED_IMPORTS")
    for value in ast.literal_eval(req_map.value).values():
        assert value.lower() in names, value


def test_cmake_packages_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    scripts = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", cmake, re.S).group(1).split()
    listed = {s.replace("${MODULE_NAME}", "MedImgAI") for s in scripts}
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")}
    assert listed == on_disk
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", cmake, re.S).group(1).split()
    listed_res = {r.replace("${MODULE_NAME}", "MedImgAI") for r in resources}
    res_on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert listed_res == res_on_disk
    # the library and the content YAML travel with it, beside the module (MedImgAILib/resources.py
    # resolves <library>/../Resources)
    assert "${_repo_root}/MedImgAILib/*.py" in cmake and "${_repo_root}/Resources/*.yaml" in cmake
    assert "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${_f}" in cmake
    from MedImgAILib.resources import resources_dir

    assert resources_dir() == REPO / "Resources"  # the same relative layout in the repository


def test_extension_metadata_is_complete():
    top = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', top), key
    assert "add_subdirectory(MedImgAI)" in top
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in top and "Slicer_EXTENSION_CPACK" in top
    icon = MODULE_DIR / "Resources" / "Icons" / "MedImgAI.png"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the screenshot the Extension Manager shows is in the repository
    shot = re.search(r'EXTENSION_SCREENSHOTURLS "[^"]*/main/([^"]+)"', top).group(1)
    assert (REPO / shot).is_file(), shot
