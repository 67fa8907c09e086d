"""Real DICOM peers for tests and benchmarks: Orthanc and DCMTK's dcmqrscp in a loopback-only network
namespace, and a way for this process to talk to them.

Why a namespace: Orthanc and dcmqrscp listen on 0.0.0.0 (no bind-address option); inside a fresh
namespace whose only interface is ``lo`` nothing but this machine's processes in the namespace can
reach them, and every test session gets its own ports.

How our client side reaches them: a network namespace belongs to a *thread* in Linux. ``entered(ns)``
switches the calling thread into the namespace with ``setns(2)`` (ctypes; ``os.setns`` is Python
3.12+) and back on exit. Threads and subprocesses started while inside inherit it, so pynetdicom's
association threads, our listener's server thread and DCMTK tools started from a test all live in
the namespace; other threads of the process (and other tests) are untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class PeerError(RuntimeError):
    pass


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise PeerError(f"setns failed: {os.strerror(err)} (needs CAP_SYS_ADMIN)")


@dataclass
class NetNs:
    """A loopback-only network namespace, removed by :meth:`remove`."""

    name: str

    @classmethod
    def create(cls, name: str | None = None) -> "NetNs":
        ip = shutil.which("ip")
        if ip is None:
            raise PeerError("the 'ip' tool (iproute2) is not installed")
        name = name or f"medimgai-test-{os.getpid()}"
        subprocess.run([ip, "netns", "del", name], capture_output=True)
        subprocess.run([ip, "netns", "add", name], check=True, capture_output=True)
        subprocess.run([ip, "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        return cls(name)

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def cmd(self, *args: str) -> list[str]:
        """A command line that runs ``args`` inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread (and what it starts) inside the namespace until exit."""
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(orig)
        finally:
            os.close(orig)
            os.close(target)

    def wait_port(self, port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        with self.entered():
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
                if proc is not None and proc.poll() is not None:
                    raise PeerError(f"server on port {port} exited with status {proc.returncode}")
                if time.monotonic() > deadline:
                    raise PeerError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
                time.sleep(0.05)


@dataclass
class Orthanc:
    """Orthanc (Debian package) with a JSON config in ``workdir``, started with TCP_NODELAY=1."""

    ns: NetNs
    workdir: Path
    aet: str = "ORTHANC"
    port: int = 4242
    http_port: int = 8042
    #: AEs Orthanc knows (C-MOVE destinations and allowed callers): name -> (aet, host, port)
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def node(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "medimgai-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomScpTimeout": 30,
            "StorageCompression": False,
            "Plugins": [],
            "HttpTimeout": 30,
            "ConcurrentJobs": 2,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def start(self) -> "Orthanc":
        exe = shutil.which("Orthanc")
        if exe is None:
            raise PeerError("Orthanc is not installed (Debian package 'orthanc')")
        cfg = self.write_config()
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen(
            self.ns.cmd("env", "TCP_NODELAY=1", exe, str(cfg)), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ns.wait_port(self.port, proc=self.proc)
        self.ns.wait_port(self.http_port, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    # -- REST, for fixtures that must not depend on the code under test -------------------------
    def rest(self, method: str, path: str, body: bytes | None = None) -> object:
        with self.ns.entered():
            req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
            with urllib.request.urlopen(req, timeout=60) as rsp:
                data = rsp.read()
        return json.loads(data) if data else None

    def upload(self, files: list[Path]) -> None:
        for f in files:
            self.rest("POST", "/instances", f.read_bytes())

    def clear(self) -> None:
        for pid in self.rest("GET", "/patients") or []:
            self.rest("DELETE", f"/patients/{pid}")


@dataclass
class Dcmqrscp:
    """DCMTK's dcmqrscp with one storage area (``workdir/db``) and a config naming known peers."""

    ns: NetNs
    workdir: Path
    aet: str = "DCMQRSCP"
    port: int = 5678
    peers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def node(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def start(self) -> "Dcmqrscp":
        exe = shutil.which("dcmqrscp")
        if exe is None:
            raise PeerError("dcmqrscp is not installed (Debian package 'dcmtk')")
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(f"{name} = ({aet}, {host}, {port})" for name, (aet, host, port) in self.peers.items())
        cfg = self.workdir / "dcmqrscp.cfg"
        cfg.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 131072\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.aet} {db} RW (500, 1024mb) ANY\nAETable END\n"
        )
        log = open(self.workdir / "dcmqrscp.log", "ab")
        self.proc = subprocess.Popen(
            self.ns.cmd("env", "TCP_NODELAY=1", exe, "-c", str(cfg)),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.ns.wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def load(self, files: list[Path]) -> None:
        """Store files with DCMTK's storescu (independent of the code under test)."""
        r = subprocess.run(
            self.ns.cmd("env", "TCP_NODELAY=1", "storescu", "-R", "-aet", "LOADER", "-aec", self.aet,
                        "127.0.0.1", str(self.port), *map(str, files)),
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise PeerError(f"storescu into dcmqrscp failed: {r.stderr[-500:]}")
