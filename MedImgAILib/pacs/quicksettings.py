"""The default PACS settings without pydantic, for a command run with no settings file.

Why: importing pydantic and building the settings models costs ~0.2 s of CPU, more than the whole
retrieval of a 200-image CT here. With no settings file there is nothing to validate but an inline
``AET@host:port``, so `medimgai pacs get` uses these plain classes, which carry the same names and
defaults as :class:`MedImgAILib.pacs.settings.PacsSettings` (a unit test holds every default equal).
With a settings file the pydantic models validate it as before. (Plain classes, not dataclasses:
``dataclasses`` imports ``inspect``, and with building the classes that cost ~10 ms of the command's
start-up here.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import PacsSettingsError

#: where settings are looked for when no ``--settings`` is given
SETTINGS_ENV = "MEDIMGAI_PACS_SETTINGS"
DEFAULT_SETTINGS_PATH = Path("~/.config/medimgai/pacs.toml")

# AE titles: 1-16 characters of the default character repertoire, no backslash, not all spaces.
AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
INLINE_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


def validate_aet(value: str, what: str = "AE title") -> str:
    if not AET_RE.match(value) or not value.strip():
        raise PacsSettingsError(f"{what} {value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


def parse_inline(spec: str) -> tuple[str, str, int] | None:
    """(AE title, host, port) of ``AET@host:port``; None when ``spec`` is not of that form."""
    m = INLINE_RE.match(spec.strip())
    if not m:
        return None
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise PacsSettingsError(f"PACS node {spec!r}: port {port} is not between 1 and 65535")
    return validate_aet(m["aet"]), m["host"].strip("[]"), port


class QuickTimeouts:
    def __init__(self, connection: float | None = 10.0, acse: float | None = 30.0, dimse: float | None = 60.0,
                 network: float | None = 120.0) -> None:
        self.connection, self.acse, self.dimse, self.network = connection, acse, dimse, network

    def __repr__(self) -> str:
        return f"QuickTimeouts({vars(self)})"


class QuickNode:
    def __init__(self, aet: str, host: str, port: int, name: str = "") -> None:
        self.aet, self.host, self.port, self.name = aet, host, port, name
        self.tls = None
        self.retrieve = "get"
        self.parallel = 1

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    __repr__ = __str__


class QuickSettings:
    def __init__(self, local_aet: str = "MEDIMGAI") -> None:
        self.local_aet = local_aet
        self.timeouts = QuickTimeouts()
        self.max_pdu = 4 * 1024 * 1024

    def node(self, spec: str) -> QuickNode:
        parsed = parse_inline(spec)
        if parsed is None:
            raise PacsSettingsError(f"unknown PACS node {spec!r}: give a configured name (none configured) "
                                    "or AET@host:port")
        aet, host, port = parsed
        return QuickNode(aet=aet, host=host, port=port, name=spec)


def settings_file(path: str | Path | None) -> Path | None:
    """The settings file that applies (``path``, else $MEDIMGAI_PACS_SETTINGS, else the default
    path if it exists); None when there is none, i.e. the defaults apply."""
    if path is not None or SETTINGS_ENV in os.environ:
        return Path(path or os.environ[SETTINGS_ENV]).expanduser()
    p = DEFAULT_SETTINGS_PATH.expanduser()
    return p if p.exists() else None


def quick_settings(path: str | Path | None, local_aet: str | None = None) -> QuickSettings | None:
    """The defaults (with ``local_aet``) as :class:`QuickSettings` when no settings file applies;
    None otherwise (load it with :func:`MedImgAILib.pacs.settings.load_settings`)."""
    if settings_file(path) is not None:
        return None
    return QuickSettings(local_aet=validate_aet(local_aet, "local AE title")) if local_aet else QuickSettings()
