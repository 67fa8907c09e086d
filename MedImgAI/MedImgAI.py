"""MedImgAI scripted module: a thin Qt shell over MedImgAILib (UI wiring only; logic lives in the library).

Follows Slicer's scripted-module template: Module / Widget / Logic / Test. The later panels (PACS,
Analyze, Review, Export) are added on this shell; everything they call is in MedImgAILib.
"""

import logging
import os

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class MedImgAI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedImgAI"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedImgAI contributors"]
        self.parent.helpText = (
            "Imaging AI in the radiology department: query the PACS, run a model on the loaded series, "
            "review findings with clinical categories and send DICOM SEG and SR back. "
            "Not for clinical use unless the model card says otherwise."
        )
        self.parent.acknowledgementText = "Built on 3D Slicer, pydicom, pynetdicom, highdicom and MONAI."


class MedImgAIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedImgAI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedImgAILogic()
        self.ui.versionLabel.text = self.logic.libraryVersion()

    def cleanup(self):
        self.removeObservers()


class MedImgAILogic(ScriptedLoadableModuleLogic):
    """Usable without the widget: ``MedImgAILogic().libraryVersion()`` from the Python console."""

    def libraryVersion(self):
        import MedImgAILib

        return MedImgAILib.__version__


class MedImgAITest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_imports()

    def test_library_imports(self):
        self.delayDisplay("Importing MedImgAILib")
        version = MedImgAILogic().libraryVersion()
        self.assertRegex(version, r"^\d+\.\d+\.\d+")
        logging.info("MedImgAILib %s from %s", version, os.path.dirname(__file__))
        self.delayDisplay("MedImgAILib imports inside Slicer")
