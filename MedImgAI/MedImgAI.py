"""MedImgAI scripted module: a thin Qt shell over MedImgAILib.

Follows Slicer's scripted-module template (Module / Widget / Logic / Test, a typed parameter node
bound to the .ui through ``SlicerParameterName`` properties). Everything that is not wiring lives in
the library: PACS (``MedImgAILib.pacs``), the analysis worker (``MedImgAILib.scene.jobs``), the review
and export logic (``MedImgAILib.scene.session``), table contents (``MedImgAILib.scene.panels``) and the
tracking store (``MedImgAILib.tracking``). Long work runs in a worker process or thread polled by a
``qt.QTimer``; the UI never waits on it.
"""

import logging
import os
import shutil
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLScalarVolumeNode

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

#: import name -> pip requirement line (Resources/requirements.txt); torch comes from the PyTorch extension
REQUIRED_IMPORTS = {
    "pydicom": "pydicom", "pynetdicom": "pynetdicom", "highdicom": "highdicom", "nibabel": "nibabel",
    "pydantic": "pydantic", "sqlalchemy": "SQLAlchemy", "yaml": "PyYAML", "monai": "monai",
}


#
# MedImgAI
#


class MedImgAI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedImgAI"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = ["DICOM", "Segmentations", "Markups"]
        self.parent.contributors = ["MedImgAI contributors"]
        self.parent.helpText = (
            "Imaging AI in the radiology department: query the PACS, run a model on the loaded series, "
            "review findings with their Lung-RADS / Fleischner categories, correct them, and send DICOM "
            "SEG and SR back. Not for clinical use unless the model card says otherwise. "
            "See docs/slicer.md in the extension's repository."
        )
        self.parent.acknowledgementText = "Built on 3D Slicer, pydicom, pynetdicom, highdicom and MONAI."


#
# Parameter node
#


class DynamicChoices:
    """Annotation: a QComboBox whose items the widget fills at run time (PACS nodes, model cards for
    the loaded modality, devices), stored as the item's data (falling back to its text)."""


@parameterNodeGuiConnector
class QComboBoxToDynamicStrConnector(GuiConnector):
    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return (type(widget) == qt.QComboBox and typing.get_origin(datatype) is Annotated
                and typing.get_args(datatype)[0] is str
                and any(isinstance(a, DynamicChoices) for a in typing.get_args(datatype)[1:]))

    @staticmethod
    def create(widget, datatype):
        if QComboBoxToDynamicStrConnector.canRepresent(widget, datatype):
            return QComboBoxToDynamicStrConnector(widget)
        return None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentIndexChanged.connect(self.changed)

    def _disconnect(self):
        self._widget.currentIndexChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        data = self._widget.currentData
        return str(data) if data else self._widget.currentText

    def write(self, value: str) -> None:
        index = self._widget.findData(value)
        if index < 0:
            index = self._widget.findText(value)
        self._widget.currentIndex = index


def _preferDynamicConnector():
    """Slicer's own QComboBox connector claims every ``str`` combo box and insists on fixed choices;
    ours must be asked first for the combo boxes annotated with DynamicChoices."""
    from slicer.parameterNodeWrapper import guiConnectors

    registry = getattr(guiConnectors, "_registeredGuiConnectors", None)
    if registry is not None and QComboBoxToDynamicStrConnector in registry:
        registry.remove(QComboBoxToDynamicStrConnector)
        registry.insert(0, QComboBoxToDynamicStrConnector)


_preferDynamicConnector()


@parameterNodeWrapper
class MedImgAIParameterNode:
    """The panel's state, saved with the scene. Names match the .ui's SlicerParameterName properties."""

    pacsNode: Annotated[str, DynamicChoices()] = ""
    inputVolume: vtkMRMLScalarVolumeNode
    modelId: Annotated[str, DynamicChoices()] = ""
    device: Annotated[str, DynamicChoices()] = "auto"
    clinicalContext: str = ""
    observer: str = ""
    outputDirectory: Path
    sendToPacs: bool = False
    keyImages: bool = True


#
# Widget: wiring only
#


class MedImgAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    TIMER_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # MedImgAILib.scene.jobs.AnalysisJob
        self._task = None  # (MedImgAILib.scene.jobs.ThreadTask, on_done)
        self._studies = []
        self._worklist = []
        self.session = None  # MedImgAILib.scene.session.ReviewSession
        self._timer = qt.QTimer()
        self._timer.setInterval(self.TIMER_MS)
        self._timer.timeout.connect(self._onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedImgAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedImgAILogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # PACS
        self.ui.echoButton.connect("clicked(bool)", self.onEcho)
        self.ui.queryButton.connect("clicked(bool)", self.onQuery)
        self.ui.retrieveButton.connect("clicked(bool)", self.onRetrieve)
        # AI worklist
        self.ui.refreshWorklistButton.connect("clicked(bool)", self.onRefreshWorklist)
        self.ui.openResultButton.connect("clicked(bool)", self.onOpenResult)
        # Analyze
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        # Review
        self.ui.findingsTable.itemSelectionChanged.connect(self._updateReviewButtons)
        self.ui.jumpButton.connect("clicked(bool)", self.onJump)
        self.ui.acceptButton.connect("clicked(bool)", lambda: self.onVerdict("accepted"))
        self.ui.rejectButton.connect("clicked(bool)", lambda: self.onVerdict("rejected"))
        self.ui.editButton.connect("clicked(bool)", self.onEdit)
        self.ui.remeasureButton.connect("clicked(bool)", self.onRemeasure)
        # Export
        self.ui.exportButton.connect("clicked(bool)", self.onExport)

        self.ui.versionLabel.text = f"MedImgAILib {self.logic.libraryVersion()}"
        self.ui.progressBar.setValue(0)
        self.ui.logTextEdit.setMaximumBlockCount(2000)
        try:
            self._populateChoices()
        except ImportError as exc:  # first start: the library's dependencies are not installed yet
            self.ui.pacsStatusLabel.text = f"Python package {exc.name} missing: press 'Install dependencies'"
        self.initializeParameterNode()
        self._updateReviewButtons()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None and self._job.active:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.session is None:  # a review saved with the scene (.mrb) continues where it stopped
            session = self.logic.sessionFromScene()
            if session is not None:
                self._showSession(session)

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.session = None
        self._fillTable(self.ui.findingsTable, [], [])

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first
        if not str(self._parameterNode.outputDirectory) or str(self._parameterNode.outputDirectory) == ".":
            self._parameterNode.outputDirectory = Path(self.logic.defaultExportDirectory())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    # --- choices ----------------------------------------------------------------------------------
    def _populateChoices(self) -> None:
        self.ui.deviceComboBox.clear()
        for d in self.logic.devices():
            self.ui.deviceComboBox.addItem(d, d)
        self.ui.pacsNodeComboBox.clear()
        try:
            for name, label in self.logic.pacsNodes():
                self.ui.pacsNodeComboBox.addItem(label, name)
        except Exception as exc:  # settings missing or invalid: say so in the PACS panel
            self.ui.pacsStatusLabel.text = str(exc)
        self.onInputVolumeChanged(self.ui.inputVolumeSelector.currentNode())
        if self._parameterNode:  # refilled combo boxes: reconnect, so they show the stored choices
            self.setParameterNode(self._parameterNode)

    def onInputVolumeChanged(self, node) -> None:
        current = self._parameterNode.modelId if self._parameterNode else ""
        self.ui.modelComboBox.clear()
        try:
            for model_id, label in self.logic.modelsFor(node):
                self.ui.modelComboBox.addItem(label, model_id)
        except Exception as exc:
            self._log(f"model cards unavailable: {exc}")
        index = self.ui.modelComboBox.findData(current)
        self.ui.modelComboBox.currentIndex = index if index >= 0 else (0 if self.ui.modelComboBox.count else -1)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None and self._job.active:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the analysis (ends the worker and everything it started)"
            self.ui.applyButton.enabled = self._job.status.state != "cancelling"
            return
        if self.logic.missingDependencies():
            self.ui.applyButton.text = "Install dependencies"
            self.ui.applyButton.toolTip = "Install the Python packages MedImgAI needs (you are asked first)"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Analyze"
        reason = self.logic.cannotAnalyzeReason(self._parameterNode) if self._parameterNode else "no parameter node"
        self.ui.applyButton.toolTip = reason or "Run the model on the input volume in the background"
        self.ui.applyButton.enabled = not reason
        self.ui.exportButton.enabled = self.session is not None and bool(self._parameterNode and self._parameterNode.observer.strip())

    # --- background work: one timer polls the analysis worker and any PACS task ------------------
    def _onTimer(self) -> None:
        if self._job is not None:
            self._pollJob()
        if self._task is not None:
            task, onDone = self._task
            done, result, error, progress = task.poll()
            if progress:
                self.ui.pacsStatusLabel.text = f"retrieving: {progress[0]} of {progress[1] or '?'} images"
            if done:
                self._task = None
                onDone(result, error)
        if self._task is None and (self._job is None or not self._job.active):
            self._timer.stop()

    def _startTask(self, statusText, onDone, fn, *args, **kw) -> None:
        if self._task is not None:
            self.ui.pacsStatusLabel.text = "busy: wait for the running PACS operation"
            return
        self.ui.pacsStatusLabel.text = statusText
        self._task = (self.logic.startTask(fn, *args, **kw), onDone)
        self._timer.start()

    def _log(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    # --- PACS -------------------------------------------------------------------------------------
    def _nodeName(self) -> str:
        return self._parameterNode.pacsNode if self._parameterNode else ""

    def onEcho(self) -> None:
        def done(seconds, error):
            self.ui.pacsStatusLabel.text = f"echo failed: {error}" if error else f"echo OK ({1000 * seconds:.0f} ms)"

        self._startTask("echo ...", done, self.logic.echo, self._nodeName())

    def onQuery(self) -> None:
        def done(records, error):
            if error:
                self.ui.pacsStatusLabel.text = f"query failed: {error}"
                return
            self._studies = records
            headers, rows = self.logic.studyTable(records)
            self._fillTable(self.ui.studiesTable, headers, rows)
            self.ui.pacsStatusLabel.text = f"{len(records)} studies"

        try:
            filters = self.logic.studyFilters(self.ui.patientLineEdit.text, self.ui.dateLineEdit.text,
                                              self.ui.modalityLineEdit.text, self.ui.accessionLineEdit.text)
        except Exception as exc:
            self.ui.pacsStatusLabel.text = str(exc)
            return
        self._startTask("querying ...", done, self.logic.query, self._nodeName(), filters)

    def onRetrieve(self) -> None:
        row = self.ui.studiesTable.currentRow()
        if row < 0 or row >= len(self._studies):
            self.ui.pacsStatusLabel.text = "select a study first"
            return
        studyUid = self._studies[row]["study_uid"]

        def done(result, error):
            if error:
                self.ui.pacsStatusLabel.text = f"retrieve failed: {error}"
                return
            with slicer.util.tryWithErrorDisplay("Could not load the retrieved study", waitCursor=True):
                loaded = self.logic.importAndLoad(result.out_dir, studyUid)
                self.ui.pacsStatusLabel.text = f"{result.received} images retrieved, {len(loaded)} series loaded"
                if loaded:
                    self.ui.inputVolumeSelector.setCurrentNode(loaded[0])

        self._startTask("retrieving ...", done, self.logic.retrieve, self._nodeName(), studyUid, with_progress=True)

    # --- AI worklist ------------------------------------------------------------------------------
    def onRefreshWorklist(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not read the AI worklist"):
            self._worklist = self.logic.worklist()
            headers, rows = self.logic.worklistTable(self._worklist)
            self._fillTable(self.ui.worklistTable, headers, rows)

    def onOpenResult(self) -> None:
        row = self.ui.worklistTable.currentRow()
        if row < 0 or row >= len(self._worklist):
            return
        item = self._worklist[row]
        with slicer.util.tryWithErrorDisplay("Could not open the AI result", waitCursor=True):
            self._showSession(self.logic.openResult(os.path.dirname(item["findings_path"]), resultId=item["result_id"]))

    # --- Analyze ----------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job is not None and self._job.active:
            self._job.cancel()
            self._showJob(self._job.status)
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the analysis", waitCursor=True):
            if self.logic.missingDependencies():
                if self.logic.ensureDependencies(ask=True):
                    self._populateChoices()  # model cards and PACS nodes can be read now
                self._checkCanApply()
                return  # the user checks the model and device, then presses Analyze
            if not self.logic.ensureDependencies(ask=True):  # torch through the PyTorch extension
                return
            p = self._parameterNode
            self.ui.logTextEdit.clear()
            self._job = self.logic.startAnalysis(p.inputVolume, p.modelId, p.device, p.clinicalContext)
            self._log(" ".join(self._job.proc.argv))
            self._timer.start()
        self._checkCanApply()

    def _pollJob(self) -> None:
        st = self._job.poll()
        for line in st.log:
            self._log(line)
        self._showJob(st)
        if st.state == "importing":
            try:
                with slicer.util.tryWithErrorDisplay("Could not show the analysis result", waitCursor=True):
                    self._showSession(self.logic.openResult(st.result_dir))
            except Exception as exc:  # shown to the user already; do not try again on the next tick
                self._job.import_failed(str(exc))
            else:
                self._job.imported()
            self._showJob(self._job.status)
        if not self._job.active:
            self._checkCanApply()

    def _showJob(self, st) -> None:
        self.ui.progressBar.setValue(int(round(100 * st.fraction)))
        self.ui.elapsedLabel.text = f"{st.state}: {st.message}  ({st.elapsed_s:.0f} s)"
        self._checkCanApply()

    # --- Review -----------------------------------------------------------------------------------
    def _showSession(self, session) -> None:
        self.session = session
        self.logic.showSession(session)
        self._refreshFindings()
        self.ui.reviewCollapsibleButton.collapsed = False

    def _refreshFindings(self) -> None:
        headers, rows = self.session.table_rows() if self.session else ([], [])
        self._fillTable(self.ui.findingsTable, headers, rows)
        self.ui.studyCategoryLabel.text = self.session.study_category_text() if self.session else ""
        self._updateReviewButtons()
        self._checkCanApply()

    def _selectedFindingId(self) -> Optional[str]:
        row = self.ui.findingsTable.currentRow()
        if self.session is None or row < 0:
            return None
        item = self.ui.findingsTable.item(row, 0)
        return item.text() if item else None

    def _updateReviewButtons(self) -> None:
        selected = self._selectedFindingId() is not None
        for b in (self.ui.jumpButton, self.ui.acceptButton, self.ui.rejectButton):
            b.enabled = selected
        self.ui.editButton.enabled = self.session is not None
        self.ui.remeasureButton.enabled = self.session is not None

    def onJump(self) -> None:
        fid = self._selectedFindingId()
        if fid:
            self.logic.jumpTo(self.session, fid)

    def onVerdict(self, status: str) -> None:
        fid = self._selectedFindingId()
        if fid:
            with slicer.util.tryWithErrorDisplay(f"Could not mark {fid} {status}"):
                self.session.set_status(fid, status)
                self._refreshFindings()

    def onEdit(self) -> None:
        self.logic.openSegmentEditor(self.session)

    def onRemeasure(self) -> None:
        with slicer.util.tryWithErrorDisplay("Re-measuring failed", waitCursor=True):
            self.session.remeasure(observer=self._parameterNode.observer)
            self._refreshFindings()

    # --- Export -----------------------------------------------------------------------------------
    def onExport(self) -> None:
        p = self._parameterNode

        def done(outcome, error):
            self.ui.exportButton.enabled = True
            if error:
                self.ui.exportStatusLabel.text = f"export failed: {error}"
                return
            sent = f", sent to {p.pacsNode}" if outcome.sent else ""
            self.ui.exportStatusLabel.text = f"{len(outcome.files)} objects written to {outcome.out_dir}{sent}"
            for w in outcome.warnings:
                self._log(w)

        with slicer.util.tryWithErrorDisplay("Export failed", waitCursor=True):
            inputs = self.session.prepare_export(p.observer)  # reads the scene: main thread
            self.logic.recordCorrections(self.session, p.observer)
            sendTo = p.pacsNode if p.sendToPacs else None
            self.ui.exportButton.enabled = False
            self.ui.exportStatusLabel.text = "writing SEG and SR ..."
            self._task = (self.logic.startTask(self.logic.writeExport, inputs, str(p.outputDirectory),
                                               keyImages=p.keyImages, sendTo=sendTo), done)
            self._timer.start()

    # --- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _fillTable(table, headers, rows) -> None:
        table.clear()
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = qt.QTableWidgetItem(str(text))
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)  # read-only cells
                table.setItem(r, c, item)
        table.resizeColumnsToContents()


#
# Logic: usable without the widget (Python console, the self-test)
#


class MedImgAILogic(ScriptedLoadableModuleLogic):
    """``logic = slicer.util.getModuleLogic("MedImgAI")``; every method works without the widget."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedImgAIParameterNode(super().getParameterNode())

    def libraryVersion(self) -> str:
        import MedImgAILib

        return MedImgAILib.__version__

    # --- dependencies -----------------------------------------------------------------------------
    _missing = None  # cached until ensureDependencies runs

    def missingDependencies(self) -> list:
        """pip requirement names of the packages that cannot be imported yet."""
        import importlib.util

        if MedImgAILogic._missing is None:
            MedImgAILogic._missing = [req for name, req in REQUIRED_IMPORTS.items() if importlib.util.find_spec(name) is None]
        return MedImgAILogic._missing

    def ensureDependencies(self, ask: bool = True) -> bool:
        """Install Resources/requirements.txt (asking first, except in testing mode) and torch through
        Slicer's PyTorch extension. numpy and SimpleITK are Slicer's own: pinned, never upgraded."""
        missing = self.missingDependencies()
        if missing:
            testing = slicer.app.testingEnabled()
            if ask and not testing and not slicer.util.confirmOkCancelDisplay(
                "MedImgAI needs these Python packages, which are not installed yet:\n  " + ", ".join(missing)
                + "\n\nInstall them now? (This takes a few minutes; Slicer's numpy and SimpleITK are kept.)",
                "MedImgAI: install dependencies",
            ):
                return False
            constraints = os.path.join(slicer.app.temporaryPath, "MedImgAI-constraints.txt")
            with open(constraints, "w") as fh:
                for dist in ("numpy", "SimpleITK"):
                    try:
                        from importlib.metadata import version

                        fh.write(f"{dist}=={version(dist)}\n")
                    except Exception:  # not installed: nothing to protect
                        pass
            requirements = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
            slicer.util.pip_install(["-r", requirements, "-c", constraints])
            MedImgAILogic._missing = None
            if self.missingDependencies():
                raise RuntimeError(f"still missing after installing: {', '.join(self.missingDependencies())}")
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("MedImgAI needs the PyTorch extension: install it from the Extensions Manager")
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if torchLogic.installTorch(askConfirmation=ask and not slicer.app.testingEnabled()) is None:
                    return False
        return True

    # --- choices ----------------------------------------------------------------------------------
    def devices(self) -> list:
        from MedImgAILib.scene.panels import DEVICES

        return list(DEVICES)

    def pacsNodes(self) -> list:
        """(name, label) of the configured PACS nodes (~/.config/medimgai/pacs.toml or
        $MEDIMGAI_PACS_SETTINGS)."""
        from MedImgAILib.pacs.settings import load_settings

        return [(name, f"{name}  ({node})") for name, node in load_settings().nodes.items()]

    def volumeModality(self, volumeNode) -> str:
        """The Modality of a volume loaded from Slicer's DICOM database ("" otherwise)."""
        files = self.volumeFiles(volumeNode)
        return slicer.dicomDatabase.fileValue(files[0], "0008,0060").strip() if files else ""

    def volumeFiles(self, volumeNode) -> list:
        if volumeNode is None or not slicer.dicomDatabase:
            return []
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        return [f for f in (slicer.dicomDatabase.fileForInstance(u) for u in uids) if f]

    def modelsFor(self, volumeNode) -> list:
        from MedImgAILib.scene.panels import models_for_modality

        return models_for_modality(self.volumeModality(volumeNode) if volumeNode else None)

    def cannotAnalyzeReason(self, p) -> str:
        if p.inputVolume is None:
            return "Select the input volume (a series loaded from DICOM)"
        if not p.inputVolume.GetAttribute("DICOM.instanceUIDs"):
            return "The input volume was not loaded from DICOM: SEG and SR need the source images"
        if not p.modelId:
            return "Select a model"
        return ""

    # --- PACS -------------------------------------------------------------------------------------
    def startTask(self, fn, *args, **kw):
        from MedImgAILib.scene.jobs import ThreadTask

        return ThreadTask(fn, *args, **kw)

    def _node(self, nodeName: str):
        from MedImgAILib.pacs.settings import load_settings

        settings = load_settings()
        return settings.node(nodeName), settings

    def echo(self, nodeName: str) -> float:
        from MedImgAILib.pacs.client import echo

        return echo(*self._node(nodeName))

    def studyFilters(self, patient: str, date: str, modality: str, accession: str) -> dict:
        from MedImgAILib.scene.panels import study_filters

        return study_filters(patient, date, modality, accession)

    def query(self, nodeName: str, filters: dict) -> list:
        from MedImgAILib.pacs.client import find

        node, settings = self._node(nodeName)
        return find(node, settings, "study", **filters)

    def studyTable(self, records) -> tuple:
        from MedImgAILib.scene.panels import STUDY_COLUMNS, study_rows

        return STUDY_COLUMNS, study_rows(records)

    def retrieve(self, nodeName: str, studyUid: str, on_progress=None):
        from MedImgAILib.pacs.client import retrieve

        node, settings = self._node(nodeName)
        out = tempfile.mkdtemp(prefix="retrieve-", dir=self._workDir())
        return retrieve(node, settings, studyUid, out, on_progress=on_progress)

    def importAndLoad(self, folder, studyUid: str) -> list:
        """Import retrieved files into Slicer's DICOM database and load the study's image series."""
        from DICOMLib import DICOMUtils

        DICOMUtils.importDicom(str(folder))
        series = list(slicer.dicomDatabase.seriesForStudy(studyUid))
        nodeIds = DICOMUtils.loadSeriesByUID(series)
        nodes = [slicer.mrmlScene.GetNodeByID(i) for i in nodeIds]
        return [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode")]

    # --- tracking ---------------------------------------------------------------------------------
    def store(self):
        from MedImgAILib.scene.session import default_store_path
        from MedImgAILib.tracking import ResultStore

        return ResultStore(default_store_path())

    def worklist(self) -> list:
        return self.store().worklist()

    def worklistTable(self, items) -> tuple:
        from MedImgAILib.scene.panels import WORKLIST_COLUMNS, worklist_rows

        return WORKLIST_COLUMNS, worklist_rows(items)

    def recordCorrections(self, session, observer: str) -> int:
        return session.record(self.store(), observer=observer)

    # --- analysis ---------------------------------------------------------------------------------
    def _workDir(self) -> str:
        d = os.path.join(slicer.app.temporaryPath, "MedImgAI")
        os.makedirs(d, exist_ok=True)
        return d

    def defaultExportDirectory(self) -> str:
        return os.path.join(self._workDir(), "export")

    def libraryRoot(self) -> str:
        """The folder holding MedImgAILib (the module's folder when installed, the repository root
        for a developer checkout): the worker process imports the same library."""
        import MedImgAILib

        return os.path.dirname(os.path.dirname(os.path.abspath(MedImgAILib.__file__)))

    def pythonExecutable(self) -> str:
        return shutil.which("PythonSlicer") or sys.executable

    def startAnalysis(self, volumeNode, modelId: str, device: str = "auto", context: str = ""):
        """Start ``medimgai analyze`` on the volume's DICOM files in a worker process."""
        from MedImgAILib.scene.jobs import AnalysisJob, link_series_files

        files = self.volumeFiles(volumeNode)
        if not files:
            raise ValueError(f"{volumeNode.GetName()} has no DICOM files in Slicer's database")
        run = tempfile.mkdtemp(prefix=time.strftime("analysis-%Y%m%d-%H%M%S-"), dir=self._workDir())
        source = link_series_files(files, os.path.join(run, "series"))
        env = {"PYTHONPATH": os.pathsep.join([self.libraryRoot(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        return AnalysisJob.start(source, modelId, os.path.join(run, "out"), device=device, context=context,
                                 python=self.pythonExecutable(), env=env)

    def runAnalysis(self, volumeNode, modelId: str, device: str = "auto", context: str = "", timeout_s: float = 1800.0):
        """Blocking form for scripts and the self-test (events are still processed while waiting)."""
        job = self.startAnalysis(volumeNode, modelId, device, context)
        t0 = time.monotonic()
        while job.active:
            st = job.poll()
            for line in st.log:
                logging.info("MedImgAI: %s", line)
            if time.monotonic() - t0 > timeout_s:
                job.cancel()
                raise TimeoutError(f"analysis did not finish in {timeout_s:.0f} s")
            slicer.app.processEvents()
            time.sleep(0.1)
        if job.status.state != "importing":
            raise RuntimeError(f"analysis {job.status.state}: {job.status.error or job.status.message}")
        session = self.openResult(job.status.result_dir)
        job.imported()
        return session

    # --- review -----------------------------------------------------------------------------------
    def openResult(self, analysisDir, resultId=None):
        """A ReviewSession on the application's scene from an analysis output folder."""
        from MedImgAILib.scene.context import SceneContext
        from MedImgAILib.scene.session import ReviewSession

        session = ReviewSession.open(analysisDir, ctx=SceneContext.from_slicer_app())
        session.result_id = resultId
        return session

    def sessionFromScene(self):
        """The review held by the current scene (e.g. a reloaded .mrb), or None."""
        from MedImgAILib.scene.context import SceneContext
        from MedImgAILib.scene.session import ReviewError, ReviewSession

        try:
            session = ReviewSession.from_scene(SceneContext.from_slicer_app())
        except (ImportError, ReviewError):
            return None
        session.sources = [Path(f) for f in self.volumeFiles(session.nodes.volume)]
        return session

    def showSession(self, session) -> None:
        slicer.util.setSliceViewerLayers(background=session.nodes.volume, fit=True)
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(session.nodes.table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        if session.findings:
            self.jumpTo(session, session.findings[0].id)

    def jumpTo(self, session, findingId: str) -> None:
        ras = session.center_ras(findingId)
        slicer.modules.markups.logic().JumpSlicesToLocation(float(ras[0]), float(ras[1]), float(ras[2]), True)

    def openSegmentEditor(self, session) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(session.nodes.segmentation)
        editor.setSourceVolumeNode(session.nodes.volume)

    # --- export -----------------------------------------------------------------------------------
    def writeExport(self, inputs, outputDirectory: str, keyImages: bool = True, sendTo=None):
        from MedImgAILib.scene.session import write_export

        return write_export(inputs, outputDirectory, key_images=keyImages, send_to=sendTo)

    def export(self, session, outputDirectory: str, observer: str, keyImages: bool = True, sendTo=None):
        """Blocking form: record the corrections, write SEG + SR (+ key images), optionally send."""
        self.recordCorrections(session, observer)
        return session.export(outputDirectory, observer, key_images=keyImages, send_to=sendTo)


#
# Test: runs inside Slicer on a phantom study
#


class MedImgAITest(ScriptedLoadableModuleTest):
    """Load a chest-CT phantom with two solid nodules through Slicer's DICOM database, analyze it with
    ct-lung-nodule, check the nodes, measurements and categories, correct and export SEG + SR, and
    read them back."""

    NODULES = [
        {"type": "solid", "diameter_mm": 11.0, "side": "right"},
        {"type": "solid", "diameter_mm": 7.0, "side": "left"},
    ]

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_imports()
        self.setUp()
        self.test_phantom_analyze_review_export()

    def test_library_imports(self):
        self.delayDisplay("Importing MedImgAILib")
        version = MedImgAILogic().libraryVersion()
        self.assertRegex(version, r"^\d+\.\d+\.\d+")
        import MedImgAILib.resources

        self.assertTrue((MedImgAILib.resources.resources_dir() / "rules").is_dir(), "rule sets are packaged")
        self.delayDisplay("MedImgAILib imports inside Slicer")

    def test_phantom_analyze_review_export(self):
        logic = MedImgAILogic()
        self.assertTrue(logic.ensureDependencies(ask=False))
        work = Path(tempfile.mkdtemp(prefix="MedImgAITest-", dir=logic._workDir()))
        previousStore = os.environ.get("MEDIMGAI_RESULTS_DB")
        os.environ["MEDIMGAI_RESULTS_DB"] = str(work / "results.db")  # not the user's tracking store
        try:
            self._analyzeReviewExport(logic, work)
        finally:
            if previousStore is None:
                os.environ.pop("MEDIMGAI_RESULTS_DB", None)
            else:
                os.environ["MEDIMGAI_RESULTS_DB"] = previousStore

    def _analyzeReviewExport(self, logic, work):
        import numpy as np
        import pydicom
        from DICOMLib import DICOMUtils
        from MedImgAILib.phantoms import spec_from_preset, write_phantom_series
        from MedImgAILib.results import AnalysisResult


        self.delayDisplay("Writing a chest-CT phantom (screening, two solid nodules)")
        spec = spec_from_preset("ldct-screening", seed=7, nodules=self.NODULES,
                                acquisition={"slice_thickness_mm": 1.25, "matrix": 256, "fov_mm": 360.0})
        case = write_phantom_series(spec, work / "series")
        truth = sorted(case.truth["nodules"], key=lambda n: -n["diameter_mm"])

        with DICOMUtils.TemporaryDICOMDatabase(str(work / "db")):
            DICOMUtils.importDicom(str(work / "series"))
            nodeIds = DICOMUtils.loadSeriesByUID([case.truth["series_instance_uid"]])
            self.assertEqual(len(nodeIds), 1)
            volumeNode = slicer.mrmlScene.GetNodeByID(nodeIds[0])
            self.assertEqual(logic.volumeModality(volumeNode), "CT")
            self.assertIn("ct-lung-nodule", [m for m, _ in logic.modelsFor(volumeNode)])

            self.delayDisplay("Analyzing with ct-lung-nodule in a worker process")
            session = logic.runAnalysis(volumeNode, "ct-lung-nodule", "auto", "screening=true,exam=baseline")

            # nodes: one segment and one long + short axis line per finding, the table, under the study
            findings = session.findings
            self.assertEqual(len(findings), 2, [f.id for f in findings])
            seg = session.nodes.segmentation.GetSegmentation()
            self.assertEqual(seg.GetNumberOfSegments(), 2)
            self.assertEqual(session.nodes.table.GetTable().GetNumberOfRows(), 2)
            for f in findings:
                self.assertEqual(set(session.nodes.lines[f.id]), {"long", "short"})
            # measurements within 1.5 mm of the phantom's truth, categories from Lung-RADS v2022
            for f, t in zip(sorted(findings, key=lambda f: -f.mean_diameter_mm), truth):
                self.assertLess(abs(f.mean_diameter_mm - t["diameter_mm"]), 1.5, (f.id, f.mean_diameter_mm, t["diameter_mm"]))
                centre = np.asarray(t["center_lps_mm"])
                self.assertLess(float(np.linalg.norm(np.asarray(f.center_lps_mm) - centre)), 2.0)
            big, small = sorted(findings, key=lambda f: -f.mean_diameter_mm)
            self.assertEqual([c.value for c in big.categories if c.system == "Lung-RADS"], ["4A"])
            self.assertEqual([c.value for c in small.categories if c.system == "Lung-RADS"], ["3"])

            self.delayDisplay("Review: accept the larger nodule, reject the smaller, export")
            logic.jumpTo(session, big.id)
            session.accept(big.id)
            session.reject(small.id)
            out = logic.export(session, str(work / "export"), "Reader^Test", keyImages=True)

            segDs = pydicom.dcmread(str(out.seg))
            self.assertEqual(len(segDs.SegmentSequence), 1)
            self.assertTrue(segDs.SegmentSequence[0].SegmentLabel.startswith(big.id))
            srDs = pydicom.dcmread(str(out.sr))
            observers = [str(i.PersonName) for i in srDs.ContentSequence
                         if i.ConceptNameCodeSequence[0].CodeValue == "121008"]
            self.assertEqual(observers, ["Reader^Test"])
            final = AnalysisResult.read(out.findings_json)
            self.assertEqual([f.status for f in final.findings], ["accepted"])
            recorded = {c["finding_id"]: c["action"] for c in logic.store().corrections()}
            self.assertEqual(recorded, {big.id: "accepted", small.id: "rejected"})

            # Slicer's own DICOM plugins read the SEG back onto the same patient
            DICOMUtils.importDicom(str(out.out_dir))
            loaded = DICOMUtils.loadSeriesByUID([segDs.SeriesInstanceUID])
            segNodes = [slicer.mrmlScene.GetNodeByID(i) for i in loaded]
            segNodes = [n for n in segNodes if n is not None and n.IsA("vtkMRMLSegmentationNode")]
            self.assertEqual(len(segNodes), 1)
            self.assertEqual(segNodes[0].GetSegmentation().GetNumberOfSegments(), 1)
        self.delayDisplay("MedImgAI phantom test passed")
