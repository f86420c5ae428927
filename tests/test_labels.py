"""Storage of corrections against a real SQLite file and a real PostgreSQL server, the same tests on both.

What the server relies on: a label id is returned only for a committed row, each committed once; a slow or
stopped database makes ``add`` fail with :class:`StorageUnavailable` within its bound instead of hanging,
and writing resumes by itself; ``close`` commits what is still waiting; several processes may migrate one
database at once. What training relies on: the export reads back through ``pendigits.load`` in screen
coordinates, split by writer.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from labelutil import exported, location, writes_blocked
from pgutil import PostgresServer

from livedigit import cli, pendigits
from livedigit.config import Settings
from livedigit.labels import database
from livedigit.labels.export import export, split_for
from livedigit.labels.store import InvalidLabel, Label, LabelStore, ModelStats, StorageError, StorageUnavailable
from livedigit.preprocess import Pixels, Strokes, preprocess

SEVEN = [[[12.0, 20.0], [88.0, 18.5], [40.0, 130.0]], [[30.0, 75.0], [70.0, 72.0]]]
"""A seven with a crossbar, in screen coordinates (y downward) on a 100x140 pad."""

PROBABILITIES = [0.01, 0.6, 0.01, 0.01, 0.01, 0.01, 0.01, 0.3, 0.02, 0.02]


def seven(writer: str = "browser-0001", submit_id: int | str | None = None, **changes: Any) -> Label:
    fields: dict[str, Any] = {
        "drawing": Strokes(SEVEN, (100.0, 140.0)),
        "digit": 7,
        "writer": writer,
        "model_name": "livedigit-cnn",
        "model_version": "v1",
        "predicted": 1,
        "probabilities": PROBABILITIES,
        "verdict": "unsure",
        "submit_id": submit_id,
        **changes,
    }
    return Label(**fields)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file path, or a new database on the session's PostgreSQL (as a
    Heroku-style ``postgres://`` URL; slow, as starting the server takes seconds)."""
    if request.param == "sqlite":
        return str(tmp_path / "data" / database.SQLITE_FILE)
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"labels_{uuid.uuid4().hex[:12]}")


async def started(target: str, **options: Any) -> LabelStore:
    store = LabelStore.open(target, **options)
    await store.start()
    assert store.available
    return store


async def add_until_stored(store: LabelStore, label: Label, within: float = 30.0) -> int:
    """Add ``label`` until the store takes it (it fails fast while it still considers the database down)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await store.add(label)
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_labels_round_trip_through_export_and_pendigits_load(target: str, tmp_path: Path) -> None:
    raster = np.arange(30 * 28, dtype=np.uint8).reshape(30, 28)
    store = await started(target)
    first = await store.add(seven(submit_id=12))
    second = await store.add(
        Label(Pixels(raster), 3, "browser-0002", "livedigit-cnn", "v1", predicted=None, probabilities=None)
    )
    await store.close()
    assert first != second

    rows = exported(target, tmp_path / "labels.jsonl")
    assert [row["id"] for row in rows] == [f"label#{first}", f"label#{second}"]
    strokes_row, pixels_row = rows
    assert strokes_row["label"] == 7 and strokes_row["writer"] == "browser-0001"
    assert strokes_row["strokes"] == SEVEN and strokes_row["surface"] == [100.0, 140.0]
    assert strokes_row["y_axis"] == "down" and "pixels" not in strokes_row
    assert strokes_row["model"] == {
        "name": "livedigit-cnn",
        "version": "v1",
        "digit": 1,
        "probabilities": PROBABILITIES,
        "verdict": "unsure",
    }
    assert strokes_row["submit_id"] == "12" and strokes_row["source"] == "livedigit labels"
    assert strokes_row["split"] == split_for("browser-0001")
    assert strokes_row["created"].endswith("Z")
    assert abs(time.time() - _epoch(strokes_row["created"])) < 3600
    assert "strokes" not in pixels_row and pixels_row["pixels"]["width"] == 28 and pixels_row["pixels"]["height"] == 30
    assert pixels_row["model"]["digit"] is None and pixels_row["model"]["probabilities"] is None

    loaded = pendigits.load(tmp_path / "labels.jsonl")
    assert loaded[0].label == 7 and loaded[0].strokes == SEVEN and loaded[0].surface == (100.0, 140.0)
    assert loaded[1].label == 3 and np.array_equal(loaded[1].pixels, raster) and loaded[1].strokes == []
    drawn = preprocess(Strokes(SEVEN, (100.0, 140.0)))
    assert drawn is not None and np.array_equal(preprocess(loaded[0].image()), drawn)


async def test_concurrent_adds_are_each_stored_exactly_once(target: str, tmp_path: Path) -> None:
    store = await started(target, timeout=30.0)

    async def client(number: int) -> dict[str, int]:
        writer = f"browser-{number:04d}"
        return {f"{number}-{index}": await store.add(seven(writer, f"{number}-{index}")) for index in range(20)}

    acknowledged: dict[str, int] = {}
    for result in await asyncio.gather(*(client(number) for number in range(50))):
        acknowledged.update(result)
    await store.close()

    assert len(acknowledged) == 1000 and len(set(acknowledged.values())) == 1000
    rows = exported(target, tmp_path / "labels.jsonl")
    assert len(rows) == 1000
    assert {row["submit_id"]: int(row["id"].removeprefix("label#")) for row in rows} == acknowledged


async def test_close_commits_the_labels_still_waiting(target: str, tmp_path: Path) -> None:
    store = await started(target, timeout=10.0)
    with writes_blocked(target):
        adds = [asyncio.create_task(store.add(seven(submit_id=index))) for index in range(300)]
        while store.pending < 300:
            await asyncio.sleep(0.01)
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0.3)
        assert not closing.done() and not any(add.done() for add in adds)
    await closing
    ids = [add.result() for add in adds]
    assert len(set(ids)) == 300
    assert sorted(int(row["id"].removeprefix("label#")) for row in exported(target, tmp_path / "l.jsonl")) == sorted(
        ids
    )


async def test_a_retried_key_is_stored_once(target: str, tmp_path: Path) -> None:
    store = await started(target)
    label = seven(key="retry-key-0001")
    first = await store.add(label)
    again = await store.add(label)
    together = await asyncio.gather(*(store.add(seven(key="retry-key-0002")) for _ in range(5)))
    other_writer = await store.add(seven(writer="browser-0002", key="retry-key-0001"))
    await store.close()
    assert first == again and len(set(together)) == 1 and other_writer != first
    assert len(exported(target, tmp_path / "labels.jsonl")) == 3


async def test_stats_count_confirmed_and_corrected_answers_per_model_version(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = await started(target)
    for digit, predicted in ((7, 7), (7, 7), (7, 7), (7, 1)):
        await store.add(seven(digit=digit, predicted=predicted))
    await store.add(seven(predicted=None, probabilities=None))
    await store.add(seven(model_version="v2", predicted=7))
    assert await store.stats() == [
        ModelStats("livedigit-cnn", "v1", confirmed=3, corrected=2),
        ModelStats("livedigit-cnn", "v2", confirmed=1, corrected=0),
    ]
    await store.close()

    capsys.readouterr()
    assert cli.main(["labels", "stats", *location(target)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "version", "confirmed", "corrected", "accuracy"]
    assert lines[1].split() == ["livedigit-cnn", "v1", "3", "2", "60.0%"]
    assert lines[2].split() == ["livedigit-cnn", "v2", "1", "0", "100.0%"]


async def test_migrations_run_once_when_processes_start_together(target: str) -> None:
    barrier = threading.Barrier(4)
    versions: list[int] = []

    def start_one() -> None:
        engine = database.create_engine(target)
        barrier.wait()
        versions.append(database.migrate(engine))
        engine.dispose()

    threads = [threading.Thread(target=start_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert versions == [len(database.MIGRATIONS)] * 4

    first, second = LabelStore.open(target), LabelStore.open(target)
    await asyncio.gather(first.start(), second.start())
    ids = await asyncio.gather(first.add(seven()), second.add(seven()))
    await asyncio.gather(first.close(), second.close())
    assert len(set(ids)) == 2
    engine = database.create_engine(target)
    with engine.connect() as connection:
        recorded = connection.execute(database.schema_version.select()).all()
    engine.dispose()
    assert [row.version for row in recorded] == list(range(1, len(database.MIGRATIONS) + 1))


async def test_a_slow_database_makes_add_unavailable_within_its_bound_and_nothing_is_stored(
    target: str, tmp_path: Path
) -> None:
    store = await started(target, timeout=1.0)
    before = await store.add(seven(submit_id="before"))
    with writes_blocked(target):
        started_at = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.add(seven(submit_id="while-blocked"))
        waited = time.monotonic() - started_at
    after = await add_until_stored(store, seven(submit_id="after"))
    await store.close()
    assert waited < store.timeout + 5.0
    rows = exported(target, tmp_path / "labels.jsonl")
    assert [(row["submit_id"], row["id"]) for row in rows] == [
        ("before", f"label#{before}"),
        ("after", f"label#{after}"),
    ]


async def test_the_queue_of_waiting_labels_is_bounded(target: str) -> None:
    store = await started(target, timeout=10.0, max_pending=4)
    with writes_blocked(target):
        waiting = [asyncio.create_task(store.add(seven(submit_id=index))) for index in range(4)]
        while store.pending < 4:
            await asyncio.sleep(0.01)
        with pytest.raises(StorageUnavailable, match="too many labels"):
            await store.add(seven(submit_id="one too many"))
        assert not any(task.done() for task in waiting)
    assert len(set(await asyncio.gather(*waiting))) == 4
    await store.close()


async def test_invalid_labels_are_refused_with_the_field_named(tmp_path: Path) -> None:
    store = await started(str(tmp_path / database.SQLITE_FILE))
    bad: list[tuple[Label, str]] = [
        (seven(digit=10), "digit"),
        (seven(digit=True), "digit"),
        (seven(predicted=-1), "predicted"),
        (seven(writer="short"), "writer"),
        (seven(writer="has space in it"), "writer"),
        (seven(key="no/slashes/here"), "key"),
        (seven(model_version=""), "model_version"),
        (seven(model_name="x" * 129), "model_name"),
        (seven(verdict="Not A Word"), "verdict"),
        (seven(probabilities=[0.1] * 9), "probabilities"),
        (seven(probabilities=[float("nan")] * 10), "probabilities"),
        (seven(submit_id="x" * 65), "submit_id"),
        (seven(drawing=Strokes([[[0, 0], [1, float("inf")]]])), "strokes"),
        (seven(drawing=Strokes([[[0, 0, 0]]])), "strokes"),
        (seven(drawing=Strokes([[], []])), "strokes"),
        (seven(drawing=Strokes([[[0, 0], [1]]])), "strokes"),
        (seven(drawing=Strokes("[[0, 0]]")), "strokes"),  # type: ignore[arg-type]
        (seven(drawing=Strokes(SEVEN, (0.0, 140.0))), "surface"),
        (seven(drawing=Pixels(np.zeros((2, 2, 2), np.uint8))), "pixels"),
        (seven(drawing=Pixels(np.full((28, 28), 2.0))), "pixels"),
        (seven(drawing=SEVEN), "drawing"),  # type: ignore[arg-type]
    ]
    for label, field_name in bad:
        with pytest.raises(InvalidLabel, match=field_name):
            await store.add(label)
    assert await store.add(seven(drawing=Pixels(np.full((28, 28), 0.5)))) > 0
    assert store.pending == 0
    await store.close()


async def test_a_row_the_database_refuses_fails_alone(target: str, tmp_path: Path) -> None:
    """A rule of the database (here: no eights) refuses one row of a batch; the others are stored."""
    store = await started(target)
    engine = database.create_engine(target)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("ALTER TABLE labels ADD CONSTRAINT no_eights CHECK (label <> 8)")
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER no_eights BEFORE INSERT ON labels WHEN NEW.label = 8 "
                "BEGIN SELECT RAISE(ABORT, 'no eights'); END"
            )
    engine.dispose()
    outcomes = await asyncio.gather(
        *(store.add(seven(digit=index % 10, submit_id=index)) for index in range(30)), return_exceptions=True
    )
    await store.close()
    refused = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, Exception)]
    assert refused == [8, 18, 28]
    assert all(type(outcomes[index]) is StorageError for index in refused)
    stored = {row["submit_id"] for row in exported(target, tmp_path / "labels.jsonl")}
    assert stored == {str(index) for index in range(30) if index % 10 != 8}


async def test_export_splits_by_writer_the_same_way_every_time(target: str, tmp_path: Path) -> None:
    store = await started(target)
    writers = [f"browser-{number:04d}" for number in range(40)]
    for writer in writers:
        await asyncio.gather(store.add(seven(writer)), store.add(seven(writer)))
    await store.close()
    first = exported(target, tmp_path / "first.jsonl")
    assert exported(target, tmp_path / "second.jsonl") == first
    splits: dict[str, set[str]] = {}
    for row in first:
        splits.setdefault(row["writer"], set()).add(row["split"])
    assert all(len(values) == 1 for values in splits.values())
    assert {next(iter(values)) for values in splits.values()} == {"train", "test"}
    assert [len(pendigits.load(tmp_path / "first.jsonl", split)) for split in ("train", "test")] == [
        2 * sum(split_for(writer) == split for writer in writers) for split in ("train", "test")
    ]


def test_export_shows_progress_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    target = str(tmp_path / database.SQLITE_FILE)

    async def fill() -> None:
        store = await started(target)
        await asyncio.gather(*(store.add(seven()) for _ in range(3)))
        await store.close()

    asyncio.run(fill())
    monkeypatch.setattr("livedigit.labels.export.PROGRESS_INTERVAL", 0.0)
    engine = database.create_engine(target)
    terminal, pipe = Terminal(), io.StringIO()
    assert export(engine, io.StringIO(), progress=terminal) == 3
    assert export(engine, io.StringIO(), progress=pipe) == 3
    engine.dispose()
    assert "exported 2 of 3 labels" in terminal.getvalue() and terminal.getvalue().endswith(
        "exported 3 labels" + " " * 16 + "\n"
    )
    assert pipe.getvalue() == ""


def test_the_commands_refuse_a_missing_sqlite_database(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit, match="no labels database"):
        cli.main(["labels", "stats", "--data-dir", str(missing)])
    assert not missing.exists()
    with pytest.raises(SystemExit, match="unsupported database URL"):
        cli.main(["labels", "stats", "--database-url", "mysql://somewhere/labels"])


def test_settings_and_the_heroku_warning() -> None:
    assert Settings.from_env({"DATABASE_URL": "postgres://a@b/c"}).database_url == "postgres://a@b/c"
    both = {"DATABASE_URL": "postgres://a@b/c", "LIVEDIGIT_DATABASE_URL": "postgres://d@e/f"}
    assert Settings.from_env(both).database_url == "postgres://d@e/f"
    assert Settings.from_env({"LIVEDIGIT_DATA_DIR": "/srv/labels"}).data_dir == "/srv/labels"
    assert database.locate("", "/srv/labels") == "/srv/labels/labels.sqlite3"
    assert database.url_for("postgres://u:secret@host:5432/db").drivername == "postgresql+psycopg"
    assert "secret" not in database.describe(database.url_for("postgres://u:secret@host:5432/db"))

    warning = database.ephemeral_storage_warning(Settings(), {"DYNO": "web.1"})
    assert warning is not None and "DATABASE_URL" in warning and "heroku-postgresql" in warning
    assert database.ephemeral_storage_warning(Settings(database_url="postgres://a@b/c"), {"DYNO": "web.1"}) is None
    assert database.ephemeral_storage_warning(Settings(), {}) is None


@pytest.mark.slow
async def test_postgresql_stopped_mid_run_then_back_loses_nothing_acknowledged(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    own_postgres.start()
    url = own_postgres.url()
    store = await started(url, timeout=1.0)
    acknowledged: dict[str, int] = {}
    refused: list[str] = []
    refusal_waits: list[float] = []
    phase = "up"
    stored_after_restart = 0

    async def client(number: int) -> None:
        nonlocal stored_after_restart
        for index in range(10_000):
            if phase == "done":
                return
            submit_id = f"{number}-{index}"
            began = time.monotonic()
            try:
                acknowledged[submit_id] = await store.add(seven(f"browser-{number:04d}", submit_id))
                stored_after_restart += phase == "restarted"
            except StorageUnavailable:
                refused.append(submit_id)
                refusal_waits.append(time.monotonic() - began)
            await asyncio.sleep(0.02)

    clients = [asyncio.create_task(client(number)) for number in range(20)]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(own_postgres.stop)
    phase = "down"
    stored_before = len(acknowledged)
    await asyncio.sleep(2.5)
    stored_while_down = len(acknowledged) - stored_before
    await asyncio.to_thread(own_postgres.start)
    phase = "restarted"
    deadline = time.monotonic() + 30
    while stored_after_restart < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    phase = "done"
    await asyncio.gather(*clients)
    await store.close()

    assert stored_before > 0 and refused and stored_after_restart >= 100
    assert stored_while_down <= 20  # at most the commits already under way when it stopped
    assert max(refusal_waits) < store.timeout + 5.0
    rows = exported(url, tmp_path / "labels.jsonl")
    assert len(rows) == len(acknowledged)
    assert {row["submit_id"]: int(row["id"].removeprefix("label#")) for row in rows} == acknowledged


@pytest.mark.slow
async def test_a_store_started_before_its_database_begins_storing_once_it_is_up(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    store = LabelStore.open(own_postgres.url(), timeout=1.0)
    await store.start()
    assert not store.available
    with pytest.raises(StorageUnavailable):
        await store.add(seven())
    await asyncio.to_thread(own_postgres.start)
    label_id = await add_until_stored(store, seven(submit_id="first"))
    await store.close()
    assert [row["id"] for row in exported(own_postgres.url(), tmp_path / "labels.jsonl")] == [f"label#{label_id}"]


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
