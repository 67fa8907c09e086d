"""highdicom's look-up "is this attribute in that SOP class's IOD?", remembered.

highdicom 0.28 answers it by scanning the standard's IOD / module / attribute tables (~0.7 ms a
question, ~3 ms for "does the IOD have pixel data"), and asks it once per source image when it builds a
SEG (is the source multi-frame?) and several times per SEG, SR and Secondary Capture it builds. On
the 300-slice bench phantom that was ~40 ms of a 0.11 s SEG build and ~15 ms of five key images. The
answer depends only on the arguments and highdicom's static tables, so it is computed once per
process. Installed when the export package is imported; ``install`` is idempotent.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import highdicom._standard_utils as _standard_utils

_MODULES_HOLDING_IT = ("highdicom._standard_utils", "highdicom.base", "highdicom.sr.content")


def _original():
    f = _standard_utils.is_attribute_in_iod
    return getattr(f, "__wrapped_lookup__", f)


@functools.lru_cache(maxsize=4096)
def _cached(attribute: str, sop_class_uid: str, exclude: Optional[tuple[str, ...]]) -> bool:
    return _original()(attribute, sop_class_uid, list(exclude) if exclude is not None else None)


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Optional[Sequence[str]] = None
) -> bool:
    """highdicom's ``is_attribute_in_iod``, memoized (an unknown SOP class still raises its KeyError)."""
    exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
    return _cached(attribute, str(sop_class_uid), exclude)


def install() -> None:
    """Put the memoized look-up where highdicom's modules call it (their own global names)."""
    import importlib

    original = _original()
    is_attribute_in_iod.__wrapped_lookup__ = original  # type: ignore[attr-defined]
    for name in _MODULES_HOLDING_IT:
        module = importlib.import_module(name)
        if getattr(module, "is_attribute_in_iod", None) in (original, is_attribute_in_iod):
            module.is_attribute_in_iod = is_attribute_in_iod  # type: ignore[attr-defined]


install()
