"""Where the documented, versioned content lives (protocols, rules, model cards, terminology).

The repository keeps it in ``Resources/`` beside the package (DESIGN.md); ``MEDIMGAI_RESOURCES``
points elsewhere (an installed extension, a site's own library)."""

from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    override = os.environ.get("MEDIMGAI_RESOURCES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "Resources"


def resource_path(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)
