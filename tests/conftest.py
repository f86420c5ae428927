"""Fixtures shared by the test suite: the shared data files and real servers on loopback ports.

A real server is ``livedigit serve`` in a child process, started and stopped by the same
:class:`~livedigit.bench.served.ServerProcess` that ``livedigit bench`` uses.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from pgutil import PostgresServer, binaries

from livedigit import pendigits
from livedigit.bench.served import ServerProcess, free_port
from livedigit.config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LIVEDIGIT_SHARED_DATA", REPO.parent / "shared" / "data"))

# CI lands a commit only when it is green, so there the property tests draw the same examples on every
# run; elsewhere each run explores new ones, and a failure one finds becomes an @example of its test.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def shared_file(name: str) -> Path:
    """A file of the shared data folder, or a skip that says where it was looked for."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{name} not found at {path} (set LIVEDIGIT_SHARED_DATA to the folder holding it)")
    return path


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    return shared_file("mnist.npz")


@pytest.fixture(scope="session")
def pen_digits_file() -> Path:
    return shared_file("pen_digits.jsonl")


@pytest.fixture(scope="session")
def pen_test(pen_digits_file: Path) -> list[pendigits.PenDigit]:
    """The pen-digits test split: 3,498 digits by 14 writers the model never saw."""
    return pendigits.load(pen_digits_file, "test")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of Debian's ``postgresql`` package, in a temporary folder on a free port."""
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    server = PostgresServer(bindir).start()
    yield server
    server.destroy()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start."""
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    server = PostgresServer(bindir)
    yield server
    server.destroy()


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


class PausableRuntime:
    """The real model behind a gate, for tests that need to hold the model still or make it fail.

    ``pause()`` makes the next model call wait (``blocked`` is set once it is waiting) until ``resume()``;
    ``fail = True`` makes calls raise. ``batch_sizes`` records every batch that reached the model.
    """

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.reads_path = runtime.reads_path
        self.fail = False
        self.batch_sizes: list[int] = []
        self.blocked = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def pause(self) -> None:
        self.blocked.clear()
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    def predict(self, batch: Any, paths: Any = None) -> Any:
        if not self._gate.is_set():
            self.blocked.set()
            self._gate.wait(timeout=60)
        if self.fail:
            raise RuntimeError("injected model failure")
        self.batch_sizes.append(len(batch))
        return self.runtime.predict(batch, paths)


@dataclass
class AppServer:
    """``create_app(settings, runtime=PausableRuntime(real model))`` under uvicorn in a thread."""

    settings: Any
    runtime: PausableRuntime
    app: Any = None
    server: Any = None
    thread: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/ws"

    @property
    def service(self) -> Any:
        return self.app.state.service

    def start(self, timeout: float = 30.0) -> AppServer:
        from livedigit.app import create_app
        from livedigit.server import Server, config

        self.app = create_app(self.settings, runtime=self.runtime)
        self.server = Server(config(self.settings, self.app))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.runtime.resume()
        if self.server is not None and self.thread is not None and self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout)


@pytest.fixture(scope="session")
def model_runtime() -> Any:
    """The shipped model, loaded once with LiteRT (each thread that runs it builds its own interpreters)."""
    from livedigit.runtime import load_runtime

    return load_runtime(DEFAULT_MODEL)


@pytest.fixture
def app_server(model_runtime: Any, tmp_path: Path) -> Iterator:
    """Factory: ``app_server(max_batch=8, ...)`` runs an in-process server with those settings on a free
    port, its model wrapped in a :class:`PausableRuntime` (``.runtime``), its labels in a SQLite file of the
    test's temporary folder; all are stopped after the test."""
    from livedigit.config import Settings

    servers: list[AppServer] = []

    def start(**overrides: Any) -> AppServer:
        defaults = {"port": free_port(), "log_level": "warning", "data_dir": str(tmp_path / "data")}
        settings = Settings(**{**defaults, **overrides})
        server = AppServer(settings, PausableRuntime(model_runtime))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pausable_runtime(model_runtime: Any) -> Iterator[PausableRuntime]:
    """The shipped model in a fresh :class:`PausableRuntime`, resumed after the test."""
    runtime = PausableRuntime(model_runtime)
    yield runtime
    runtime.resume()
