"""PACS nodes, the local AE and network timeouts: from a TOML or YAML settings file, or inline.

A node is an AE title plus host and port (``ORTHANC@127.0.0.1:4242``), optionally with TLS. The
settings file is documented in docs/pacs.md; ``Resources/pacs/settings.example.toml`` is a working
example. Files are validated on load (pydantic) so a typo names the key and the file.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..fileio import parse_yaml
from .errors import PacsSettingsError
from .quicksettings import DEFAULT_SETTINGS_PATH, INLINE_RE as _INLINE_RE, SETTINGS_ENV, validate_aet

__all__ = ["DEFAULT_SETTINGS_PATH", "SETTINGS_ENV", "ListenerSettings", "Node", "PacsSettings", "Timeouts",
           "TlsSettings", "load_settings", "validate_aet"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Model):
    """TLS for one association. ``ca`` verifies the peer; ``cert``/``key`` identify us."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    #: server side: require and verify a client certificate signed by ``ca``
    require_client_cert: bool = False
    #: client side: check that the server certificate names the host we connected to
    check_hostname: bool = True

    def client_context(self, host: str) -> tuple[ssl.SSLContext, str]:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None)
        ctx.check_hostname = self.check_hostname
        if self.cert:
            ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return ctx, host

    def server_context(self) -> ssl.SSLContext:
        if not self.cert:
            raise PacsSettingsError("listener TLS needs a certificate (tls.cert) and key (tls.key)")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca) if self.ca else None)
        ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_NONE
        return ctx


class Timeouts(_Model):
    """Seconds. ``None`` waits for ever (never the default)."""

    connection: float | None = 10.0  # TCP connect
    acse: float | None = 30.0  # association request/release
    dimse: float | None = 60.0  # one DIMSE response (a C-GET sub-operation, a C-FIND match)
    network: float | None = 120.0  # any silence on an established association


class Node(_Model):
    """A remote DICOM application entity."""

    aet: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TlsSettings | None = None
    #: C-GET (default) or C-MOVE for retrieval from this node
    retrieve: Literal["get", "move"] = "get"
    #: parallel associations used for one retrieval (1 = no parallelism, the fastest here since the
    #: synchronous C-GET path: one STUDY-level C-GET, no per-instance listing; see docs/pacs.md)
    parallel: int = Field(default=1, ge=1, le=16)
    name: str = ""

    @field_validator("aet")
    @classmethod
    def _aet(cls, v: str) -> str:
        return validate_aet(v)

    def __str__(self) -> str:  # the form users type and errors print
        return f"{self.aet}@{self.host}:{self.port}"


class ListenerSettings(_Model):
    aet: str = "MEDIMGAI"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    store: Path = Path("~/.local/share/medimgai/store")
    #: calling AE titles allowed to associate; empty = anyone
    allow: list[str] = Field(default_factory=list)
    max_associations: int = Field(default=8, ge=1, le=256)
    quiet_seconds: float = Field(default=30.0, gt=0)
    #: refuse instances (0xA700 out of resources) when the store's disk has less free space than this
    min_free_mb: float = Field(default=1024.0, ge=0)
    tls: TlsSettings | None = None
    #: metadata index (SQLite path or SQLAlchemy URL); empty = none
    index: str = ""


class PacsSettings(_Model):
    local_aet: str = "MEDIMGAI"
    timeouts: Timeouts = Timeouts()
    #: largest P-DATA PDU we accept (bytes); big PDUs cut per-image overhead. 0 = no limit.
    max_pdu: int = Field(default=4 * 1024 * 1024, ge=0)
    nodes: dict[str, Node] = Field(default_factory=dict)
    listener: ListenerSettings = ListenerSettings()

    @field_validator("local_aet")
    @classmethod
    def _aet(cls, v: str) -> str:
        return validate_aet(v, "local AE title")

    def node(self, spec: str) -> Node:
        """A configured node by name, or an inline ``AET@host:port``."""
        if spec in self.nodes:
            return self.nodes[spec]
        m = _INLINE_RE.match(spec.strip())
        if m:
            host = m["host"].strip("[]")
            return Node(aet=validate_aet(m["aet"]), host=host, port=int(m["port"]), name=spec)
        known = ", ".join(sorted(self.nodes)) or "none configured"
        raise PacsSettingsError(f"unknown PACS node {spec!r}: give a configured name ({known}) or AET@host:port")


def load_settings(path: str | Path | None = None) -> PacsSettings:
    """Settings from ``path``, else $MEDIMGAI_PACS_SETTINGS, else ~/.config/medimgai/pacs.toml if it
    exists, else the defaults. ``.toml`` is read with tomllib, ``.yaml``/``.yml`` with PyYAML."""
    explicit = path is not None or SETTINGS_ENV in os.environ
    p = Path(path or os.environ.get(SETTINGS_ENV) or DEFAULT_SETTINGS_PATH).expanduser()
    if not p.exists():
        if explicit:
            raise PacsSettingsError(f"PACS settings file {p} does not exist")
        return PacsSettings()
    try:
        if p.suffix.lower() == ".toml":
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml  # only for YAML files: importing it costs every command ~30 ms

            try:
                raw = parse_yaml(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise PacsSettingsError(f"PACS settings file {p} is not valid: {exc}") from exc
        else:
            raise PacsSettingsError(f"PACS settings file {p}: use .toml, .yaml or .yml")
    except tomllib.TOMLDecodeError as exc:
        raise PacsSettingsError(f"PACS settings file {p} is not valid: {exc}") from exc
    nodes = raw.get("nodes") if isinstance(raw, dict) else None
    if isinstance(nodes, dict):  # the table key is the node's name
        for name, node in nodes.items():
            if isinstance(node, dict):
                node.setdefault("name", name)
    try:
        return PacsSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise PacsSettingsError(f"PACS settings file {p}: {where}: {first['msg']}") from exc
