"""Where corrections are kept: the database address, the engine, the schema and its migrations.

One code path for both databases, through SQLAlchemy Core: SQLite (the stdlib driver) in a data folder by
default, PostgreSQL (psycopg 3) when ``DATABASE_URL`` is set, as Heroku sets it. The few places where the
two differ are here and nowhere else: how a transaction starts, how long a statement may wait, and how
concurrent starts are kept from migrating the same database twice.

The schema has a version. :data:`MIGRATIONS` are applied in order at start, each once, in one transaction
that also records the version, so a failed start leaves the previous version intact. Several processes
may start at once against one database (dynos sharing a PostgreSQL, two tools on one SQLite file): the
migrating transaction first takes a lock (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``),
so the second waits and then finds nothing left to do. Migrations only add (tables, nullable columns,
indexes), so code one version behind keeps working during a rolling restart.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

if TYPE_CHECKING:
    from livedigit.config import Settings

logger = logging.getLogger("livedigit.labels")

SQLITE_FILE = "labels.sqlite3"
"""The database file's name inside ``--data-dir``."""

MIGRATION_LOCK = int.from_bytes(b"ldlabels", "big")
"""PostgreSQL advisory lock key held while migrating (any 64-bit number no other code uses)."""

CONNECT_TIMEOUT = 5
"""Seconds a new PostgreSQL connection may take; a database that does not answer is unavailable."""

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied", sa.DateTime(timezone=True), nullable=False),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("writer", sa.String(64), nullable=False, comment="random per-browser id"),
    sa.Column("key", sa.String(64), nullable=False, comment="idempotency key, unique per writer"),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False, comment="UTC"),
    sa.Column("label", sa.SmallInteger, nullable=False, comment="the true digit"),
    sa.Column("strokes", sa.Text, comment="JSON [[[x, y], ...], ...], screen coordinates as sent"),
    sa.Column("surface_width", sa.Float),
    sa.Column("surface_height", sa.Float),
    sa.Column("pixels", sa.LargeBinary, comment="uint8 raster, row-major, ink high"),
    sa.Column("pixels_width", sa.Integer),
    sa.Column("pixels_height", sa.Integer),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("predicted", sa.SmallInteger, comment="the model's digit; NULL when it saw no digit"),
    sa.Column("probabilities", sa.Text, comment="JSON list of ten floats"),
    sa.Column("verdict", sa.String(32)),
    sa.Column("submit_id", sa.String(64), comment="the id of the submit it corrects, as text"),
    sa.CheckConstraint("label BETWEEN 0 AND 9", name="label_is_a_digit"),
    sa.CheckConstraint("(strokes IS NULL) <> (pixels IS NULL)", name="one_drawing"),
    sa.UniqueConstraint("writer", "key", name="labels_writer_key"),
    sqlite_autoincrement=True,  # never reuse an id, so an exported id names one row for good
)
sa.Index("labels_created", labels.c.created, labels.c.id)
sa.Index("labels_model", labels.c.model_name, labels.c.model_version, labels.c.label, labels.c.predicted)


def _version_1(connection: Connection) -> None:
    """The labels table, its export index (time, id) and its statistics index (model, answers).

    It creates the table as defined above; a later change to the table is a new migration, and this
    one then keeps a copy of the version-1 definition.
    """
    labels.create(connection)


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_version_1,)
"""Schema version N is reached by applying ``MIGRATIONS[N - 1]``."""


def locate(database_url: str, data_dir: str | Path) -> str:
    """The database to use: ``database_url`` when given, else the SQLite file in ``data_dir``."""
    return database_url or str(Path(data_dir) / SQLITE_FILE)


def url_for(target: str | Path) -> URL:
    """SQLAlchemy's URL for a database URL or a SQLite file path.

    ``postgres://`` (Heroku's spelling) and ``postgresql://`` both mean PostgreSQL through psycopg 3.
    """
    text = str(target)
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text)))
    scheme, rest = text.split("://", 1)
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return make_url("postgresql+psycopg://" + rest)
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return make_url(text)
    raise ValueError(f"unsupported database URL scheme {scheme!r}: use postgres://, postgresql:// or sqlite:///PATH")


def describe(url: URL) -> str:
    """The URL as it may be logged: without its password."""
    return url.render_as_string(hide_password=True)


def create_engine(target: str | Path, *, create: bool = True, pool_size: int = 2, pool_timeout: float = 30.0) -> Engine:
    """An engine for ``target`` (see :func:`url_for`).

    SQLite: the folder is created when ``create`` is true, otherwise a missing file is an error (a tool
    pointed at the wrong folder should say so, not read an empty new database). A connection is awaited
    from the pool at most ``pool_timeout`` seconds. The file is in WAL mode,
    so readers (an export) never block the server's writes, with ``synchronous=FULL``: a committed row
    survives a power cut. PostgreSQL: at most ``pool_size`` connections plus as many again for bursts,
    TCP keepalives so a vanished server is noticed within seconds.
    """
    url = url_for(target)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not url.database or url.database == ":memory:":
            raise ValueError("labels need a SQLite file, not an in-memory database")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise FileNotFoundError(f"no labels database at {path} (set --data-dir or DATABASE_URL)")
        engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "application_name": "livedigit",
        }
        return sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=pool_timeout, connect_args=connect_args
        )
    raise ValueError(f"unsupported database {url.get_backend_name()!r}")


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # The sqlite3 module's own transaction handling begins transactions late and never for DDL; turn it
    # off and let the "begin" event below say BEGIN, as SQLAlchemy documents for pysqlite.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA busy_timeout = 5000")
    # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once, without
    # waiting, while another connection opens it too: retry for as long as a lock would be waited for.
    deadline = time.monotonic() + 5.0
    while dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            dbapi_connection.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    dbapi_connection.execute("PRAGMA synchronous = FULL")


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock at once: a transaction that reads and then writes (a migration)
    # would otherwise fail instead of waiting when another one writes first.
    # The busy timeout is reset here because limit_time() lowers it for one transaction.
    immediate = connection.get_execution_options().get("immediate", False)
    connection.exec_driver_sql("PRAGMA busy_timeout = 5000")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def limit_time(connection: Connection, seconds: float) -> None:
    """Make the database abort what is left of this transaction's work after ``seconds``.

    PostgreSQL: ``statement_timeout`` for each statement of the transaction; SQLite: how long a write
    waits for another writer's lock. Call it first in a transaction.
    """
    milliseconds = max(1, int(seconds * 1000))
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
    else:
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {milliseconds}")


def migrate(engine: Engine) -> int:
    """Bring the schema to the latest version and return it; safe to run from several processes at once."""
    latest = len(MIGRATIONS)
    with engine.connect().execution_options(immediate=True) as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        schema_version.create(connection, checkfirst=True)
        current = connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
        if current > latest:
            logger.warning(
                "the labels database is at schema version %d, newer than this code's %d; carrying on "
                "(migrations only add)",
                current,
                latest,
            )
            return int(current)
        for version in range(current + 1, latest + 1):
            MIGRATIONS[version - 1](connection)
            connection.execute(schema_version.insert().values(version=version, applied=datetime.now(UTC)))
            logger.info("labels database migrated to schema version %d", version)
        return latest


def ephemeral_storage_warning(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """What ``livedigit serve`` should warn about when it runs on Heroku (``DYNO`` is set) with no
    ``DATABASE_URL``: the labels would go to the dyno's filesystem, which Heroku wipes at every restart."""
    environ = os.environ if environ is None else environ
    if "DYNO" not in environ or settings.database_url:
        return None
    return (
        f"running on Heroku (DYNO={environ['DYNO']}) without DATABASE_URL: labels are kept in "
        f"{Path(settings.data_dir) / SQLITE_FILE} on the dyno's filesystem, which Heroku wipes at every "
        "restart (at least daily); add a database: heroku addons:create heroku-postgresql:essential-0"
    )
