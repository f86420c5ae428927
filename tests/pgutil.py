"""A real PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in a temporary folder, a
free loopback port.

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root: then the cluster belongs to the
``postgres`` system user (``nobody`` where there is none) and the binaries run as that user. The folder is
made directly under the system's temporary folder, because pytest's own temporary folders are private to
the user running the tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

BINARY_GLOB = "/usr/lib/postgresql/*/bin"


def binaries() -> Path | None:
    """The folder of the newest installed PostgreSQL's ``initdb``, ``pg_ctl`` and ``postgres``, if any."""
    candidates = sorted(
        (path for path in Path("/").glob(BINARY_GLOB.lstrip("/")) if (path / "initdb").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster: ``start()``, ``stop()`` (fast shutdown: sessions are cut), ``url(name)``."""

    def __init__(self, bindir: Path, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="livedigit-pg-"))
        self.data = self.root / "data"
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = _account("postgres") or _account("nobody")
            if account is None:
                raise RuntimeError("running as root, and there is no postgres or nobody user to run PostgreSQL")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C")

    def url(self, database: str = "postgres", scheme: str = "postgres") -> str:
        """The database's URL; ``postgres://`` as Heroku writes it."""
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        with psycopg.connect(self.url(scheme="postgresql"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            **self._user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr or done.stdout}\n{self.log()}")


def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None
