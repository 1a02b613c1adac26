"""Azurite, the Azure Storage emulator from npm, started on 127.0.0.1 for tests and the
demo: queue and table services in memory, on free ports, stopped on exit."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key: public, documented, works only against Azurite.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BINARY = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "azurite"


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _dies_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that asks the kernel to send SIGTERM to Azurite when the
    process that started it dies, however it dies (prctl(2), PR_SET_PDEATHSIG): a
    ``kill -9`` of ``python -m localazure`` leaves no Azurite behind. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os._exit(1)

    return hook


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Azurite:
    def __init__(self, binary: Path = BINARY) -> None:
        if not binary.exists():
            raise FileNotFoundError(f"Azurite is not installed at {binary}: `npm ci` installs it")
        self.binary = binary
        self.ports = {"blob": _free_port(), "queue": _free_port(), "table": _free_port()}
        self._process: subprocess.Popen[bytes] | None = None
        self._workspace = tempfile.TemporaryDirectory(prefix="azurite-")

    @property
    def connection_string(self) -> str:
        endpoints = "".join(
            f"{name.capitalize()}Endpoint=http://127.0.0.1:{port}/{ACCOUNT};"
            for name, port in self.ports.items()
        )
        return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};{endpoints}"

    def start(self, timeout: float = 60) -> Azurite:
        command = [
            str(self.binary),
            "--silent",
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]
        for name, port in self.ports.items():
            command += [f"--{name}Host", "127.0.0.1", f"--{name}Port", str(port)]
        self._process = subprocess.Popen(
            command,
            cwd=self._workspace.name,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_dies_with_parent(),  # noqa: PLW1509 - one prctl call, takes no lock
        )
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        error = self._process.stderr.read().decode() if self._process.stderr else ""
                        self.stop()
                        raise RuntimeError(f"Azurite did not start: {error[-2000:]}") from None
                    time.sleep(0.1)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._workspace.cleanup()

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
