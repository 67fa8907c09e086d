"""MedImgAILib: the MedImgAI library. Importable without 3D Slicer or Qt.

Stages (one sub-package each, a stage imports only stages before it):
dicom -> pacs -> models/inference -> findings -> rules -> export -> protocols -> tracking -> validation;
``pipeline`` composes them; ``scene`` is the MRML boundary; ``cli`` is the command line.
"""

__version__ = "0.1.0"
