"""``python -m livedigit serve`` in a child process on a free loopback port, started and stopped as a user
would: the bench's own server, and the tests' real servers.

Only the standard library is imported here, so the tests can start servers without the bench's
dependencies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

HOST = "127.0.0.1"

START_TIMEOUT_S = 60.0
"""How long a server may take to answer ``/readyz`` before it counts as failed to start."""

STOP_TIMEOUT_S = 30.0
"""How long a stopped server may take to exit before it is killed."""

DATABASE_VARIABLES = frozenset({"DATABASE_URL", "LIVEDIGIT_DATABASE_URL", "LIVEDIGIT_DATA_DIR"})
"""Where the environment keeps labels: not passed on to a server started here, which keeps its own."""


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(process: subprocess.Popen[bytes], http_url: str, timeout: float) -> bool:
    """Poll ``/readyz`` until it answers 200 (True), the process exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(http_url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.05)
    return False


DEFAULT_PROGRAM = (sys.executable, "-m", "livedigit")
"""How a server is run unless told otherwise: this interpreter's ``livedigit`` package."""


@dataclass
class ServerProcess:
    """``python -m livedigit serve --host 127.0.0.1 --port PORT *args`` with ``env`` added to the
    environment; its output goes to a log file in the folder given to :meth:`start`."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    program: list[str] = field(default_factory=lambda: list(DEFAULT_PROGRAM))
    """How ``livedigit`` is run: this interpreter's package, or another install's command (with ``cwd``)."""
    cwd: Path | None = None
    ready_seconds: float | None = None
    """Seconds from starting the process to its first 200 on ``/readyz``: how long a restarted or newly
    scaled dyno is unable to serve (within the 50 ms between polls)."""

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, log_dir: Path, timeout: float = START_TIMEOUT_S) -> Self:
        """Start the server and return once it is ready; raise ``RuntimeError`` with the end of its log
        when it exits or is not ready within ``timeout`` seconds (it is stopped then).

        Labels go to a SQLite file in ``log_dir`` unless ``env`` or ``args`` say otherwise: a server
        started for a test or a benchmark never writes into a database of the environment's."""
        self.log_path = log_dir / f"server-{self.port}.log"
        command = [*self.program, "serve", "--host", HOST, "--port", str(self.port), *self.args]
        inherited = {name: value for name, value in os.environ.items() if name not in DATABASE_VARIABLES}
        labels = {"LIVEDIGIT_DATA_DIR": str(log_dir / "data")}
        environment = {**inherited, "PYTHONUNBUFFERED": "1", **labels, **self.env}
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=environment
            )
        if wait_until_ready(self.process, self.http_url, timeout):
            self.ready_seconds = round(time.monotonic() - started, 2)
            return self
        exited = self.process.poll()
        self.stop()
        if exited is not None:
            raise RuntimeError(f"the server exited with {exited}:\n{self.tail()}")
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{self.tail()}")

    def log(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send ``sig`` (a graceful shutdown by default), kill the server if it has not exited after
        ``timeout`` seconds, and return its exit status (``None`` when it was never started)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def server_for(
    clients: int, rate: float, flags: list[str], program: list[str] | None = None
) -> Iterator[ServerProcess]:
    """A server for ``clients`` people sending ``rate`` frames/s each, with ``flags`` added (run as
    ``program``, by default this interpreter's ``livedigit``); its log is removed when it stops.

    Every simulated person connects from 127.0.0.1, so the limits per client address are raised to what
    that many people would have from their own addresses: connections, the HTTP prediction rate, and the
    bytes of frames read per second (``--address-byte-rate``, lifted: at 10 frames/s, about a thousand
    people's snapshots pass one address's budget, and the server would then read them late).
    """
    limits = [
        "--log-level",
        "warning",
        "--max-connections-per-client",
        str(clients + 16),
        "--max-connections",
        str(max(1000, clients + 16)),
        "--submit-rate",
        str(max(5.0, 2.0 * clients * rate)),
        "--submit-burst",
        str(max(10, 2 * clients)),
        "--address-byte-rate",
        "0",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="livedigit-bench-") as logs,
        ServerProcess([*limits, *flags], program=program or list(DEFAULT_PROGRAM)).start(Path(logs)) as server,
    ):
        yield server
