"""Fixtures shared by the test suite: the shared data files and real servers on loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from livedigit import pendigits

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LIVEDIGIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    path = SHARED_DATA / "mnist.npz"
    if not path.is_file():
        pytest.skip(f"MNIST not found at {path} (set LIVEDIGIT_SHARED_DATA to the folder holding mnist.npz)")
    return path


@pytest.fixture(scope="session")
def pen_path() -> Path:
    path = SHARED_DATA / "pen_digits.jsonl"
    if not path.is_file():
        pytest.skip(f"pen digits not found at {path} (set LIVEDIGIT_SHARED_DATA to the folder holding it)")
    return path


@pytest.fixture(scope="session")
def pen_test(pen_path: Path) -> list[pendigits.PenDigit]:
    """The pen-digits test split: 3,498 digits by 14 writers the model never saw."""
    return pendigits.load(pen_path, "test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """``livedigit serve`` in a child process on a free loopback port, as a user would run it."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, log_dir: Path, timeout: float = 30.0) -> "ServerProcess":
        self.log_path = log_dir / f"server-{self.port}.log"
        command = [sys.executable, "-m", "livedigit", "serve", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(
            command, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http_url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory: ``start_server(*flags, env={...})`` starts a server; all are stopped after the test."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, port: int | None = None) -> ServerProcess:
        server = ServerProcess(list(args), env or {}, port or free_port())
        servers.append(server.start(tmp_path))
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with default settings, shared by the tests that only talk to it."""
    process = ServerProcess().start(tmp_path_factory.mktemp("server"))
    yield process
    process.stop()
