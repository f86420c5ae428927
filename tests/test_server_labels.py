"""Labels through a real ``livedigit serve``: the ``label`` message on /ws and ``POST /api/labels``, kept in
a real SQLite file and a real PostgreSQL server (the same tests on both), read back with ``livedigit labels
export``.

What a person relies on: a label answered ``stored`` is in the database, once, exactly as sent; a bad one
gets its documented error and the connection goes on; a slow or missing database costs labels an
``unavailable`` (which says when to retry) but never a prediction, of this connection's later messages or
anyone else's; a restart (SIGTERM) loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess, free_port
from hardutil import scrape
from labelutil import exported, location, writes_blocked
from pgutil import PostgresServer
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from wsutil import ONE, SEVEN, ask, drawing, http_json, legacy_field, open_ws, pixels_field, png_field, reply

from livedigit.labels import database
from livedigit.preprocess import ink_from_png

SURFACE = [200, 200]
PROBABILITIES = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.58, 0.08, 0.06]

OPEN_LIMITS = ["--label-rate", "0", "--label-rate-per-client", "0", "--submit-rate", "0"]
"""Rate limits off: these tests send labels and submits faster than a person would."""


def writer() -> str:
    """A browser id of this test's own, so its rows can be told from the others' in a shared database."""
    return "t-" + uuid.uuid4().hex[:20]


def label(writer_id: str, **fields: Any) -> dict[str, Any]:
    """A ``label`` message for SEVEN drawn on a 200x200 pad, with the fields a page sends."""
    return {"type": "label", "strokes": SEVEN, "surface": SURFACE, "digit": 7, "writer": writer_id, **fields}


def rows_of(rows: list[dict[str, Any]], writer_id: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["writer"] == writer_id]


def label_id(row: dict[str, Any]) -> int:
    return int(row["id"].removeprefix("label#"))


@dataclass
class Labelled:
    """A server storing labels in ``target`` (a SQLite file path or a PostgreSQL URL)."""

    server: ServerProcess
    target: str
    folder: Path

    def export(self) -> list[dict[str, Any]]:
        return exported(self.target, self.folder / f"export-{uuid.uuid4().hex[:8]}.jsonl")


def database_for(request: pytest.FixtureRequest, folder: Path) -> str:
    """An empty database of the kind ``request.param`` names."""
    if request.param == "sqlite":
        return str(folder / "data" / database.SQLITE_FILE)
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database(f"served_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def labelled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labelled]:
    folder = tmp_path_factory.mktemp(f"labelled-{request.param}")
    target = database_for(request, folder)
    server = ServerProcess([*location(target), *OPEN_LIMITS, "--label-timeout", "2"]).start(folder)
    yield Labelled(server, target, folder)
    server.stop()
    assert "Traceback" not in server.log(), server.tail()


@pytest.mark.slow
async def test_a_label_is_stored_once_committed_and_exported_as_sent(labelled: Labelled) -> None:
    server = labelled.server
    me = writer()
    version = http_json(server.http_url + "/api/model")[2]["version"]
    before = scrape(server.http_url)
    raster = drawing()
    ws, _ = await open_ws(server.ws_url)
    async with ws:
        answer = await ask(ws, {"type": "submit", "id": 1, "strokes": SEVEN, "surface": SURFACE})
        assert answer["type"] == "prediction"
        wrong = (answer["digit"] + 1) % 10
        correction = label(
            me,
            id="fix-1",
            digit=wrong,
            submit_id=1,
            key="key-of-fix-1",
            predicted=answer["digit"],
            probabilities=answer["probabilities"],
            verdict="unsure",
        )
        stored = await ask(ws, correction)
        assert stored["type"] == "stored" and stored["id"] == "fix-1" and isinstance(stored["label_id"], int)
        confirmation = {"type": "label", "id": 2, "pixels": pixels_field(raster), "digit": 7, "writer": me}
        confirmed = await ask(ws, {**confirmation, "predicted": 7, "probabilities": PROBABILITIES})
        assert confirmed["type"] == "stored" and confirmed["id"] == 2
        legacy = await ask(ws, {"type": "label", "id": 3, "image": legacy_field(raster), "digit": 7, "writer": me})
        assert legacy["type"] == "stored"
    status, headers, over_http = http_json(
        server.http_url + "/api/labels", {"png": png_field(raster, data_url=True), "digit": 4, "writer": me}
    )
    assert status == 200 and headers["content-type"] == "application/json"
    assert over_http["type"] == "stored" and over_http["id"] is None

    rows = {label_id(row): row for row in rows_of(labelled.export(), me)}
    assert sorted(rows) == sorted(
        [stored["label_id"], confirmed["label_id"], legacy["label_id"], over_http["label_id"]]
    )
    fixed = rows[stored["label_id"]]
    assert fixed["label"] == wrong and fixed["strokes"] == SEVEN and fixed["surface"] == SURFACE
    assert fixed["submit_id"] == "1" and fixed["y_axis"] == "down"
    assert fixed["model"] == {
        "name": "livedigit-cnn",
        "version": version,
        "digit": answer["digit"],
        "probabilities": answer["probabilities"],
        "verdict": "unsure",
    }
    as_sent = rows[confirmed["label_id"]]
    assert as_sent["label"] == 7 and as_sent["pixels"] == pixels_field(raster)
    assert as_sent["model"]["digit"] == 7 and as_sent["model"]["probabilities"] == PROBABILITIES
    assert rows[legacy["label_id"]]["pixels"] == pixels_field(raster)
    png_row = rows[over_http["label_id"]]
    decoded = np.rint(ink_from_png(base64.b64decode(png_field(raster))) * 255).astype(np.uint8)
    assert png_row["label"] == 4 and png_row["pixels"] == pixels_field(decoded)
    assert png_row["model"] == {"name": "livedigit-cnn", "version": version, "digit": None,
                                "probabilities": None, "verdict": None}  # fmt: skip

    after = scrape(server.http_url)

    def grew(answer_kind: str) -> float:
        name = f'livedigit_labels_total{{answer="{answer_kind}",model="livedigit-cnn",version="{version}"}}'
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert (grew("confirmed"), grew("corrected")) == (1.0, 3.0)  # a label with no answer corrects nothing
    assert after["livedigit_labels_database_available"] == 1.0 and after["livedigit_labels_pending"] == 0.0
    assert after["livedigit_labels_rows_committed_total"] - before["livedigit_labels_rows_committed_total"] == 4
    replies = 'livedigit_replies_total{type="stored"}'
    assert after[replies] - before.get(replies, 0.0) == 4


async def test_a_label_sent_again_with_its_key_is_stored_once(labelled: Labelled) -> None:
    me = writer()
    message = label(me, key="the-same-key", submit_id="s-1")
    ws, _ = await open_ws(labelled.server.ws_url)
    async with ws:
        first = await ask(ws, {**message, "id": 1})
        again = await ask(ws, {**message, "id": 2})
    status, _, over_http = http_json(labelled.server.http_url + "/api/labels", message)
    assert first["type"] == again["type"] == "stored" and status == 200
    assert first["label_id"] == again["label_id"] == over_http["label_id"]
    assert [label_id(row) for row in rows_of(labelled.export(), me)] == [first["label_id"]]


MALFORMED: list[tuple[str, dict[str, Any], str, str]] = [
    # (what, fields changed (None: removed), code, words the message holds)
    ("no digit", {"digit": None}, "bad_message", "digit"),
    ("digit 10", {"digit": 10}, "bad_message", "digit must be 0-9"),
    ("digit -1", {"digit": -1}, "bad_message", "digit must be 0-9"),
    ("digit as text", {"digit": "7"}, "bad_message", "digit"),
    ("digit as a boolean", {"digit": True}, "bad_message", "digit"),
    ("huge digit", {"digit": 10**30}, "bad_message", "digit"),
    ("no writer", {"writer": None}, "bad_message", "writer"),
    ("short writer", {"writer": "short"}, "bad_message", "writer must be 8-64"),
    ("writer with spaces", {"writer": "has spaces in it"}, "bad_message", "writer"),
    ("writer too long", {"writer": "w" * 65}, "bad_message", "writer"),
    ("writer as a number", {"writer": 12345678}, "bad_message", "writer"),
    ("key with slashes", {"key": "no/slashes/here"}, "bad_message", "key must be 8-64"),
    ("submit_id past 64 bits", {"submit_id": 2**63}, "bad_message", "submit_id"),
    ("submit_id too long", {"submit_id": "s" * 65}, "bad_message", "submit_id"),
    ("submit_id as a list", {"submit_id": [1]}, "bad_message", "submit_id"),
    ("predicted 12", {"predicted": 12}, "bad_message", "predicted must be 0-9"),
    ("nine probabilities", {"probabilities": [0.1] * 9}, "bad_message", "probabilities"),
    ("a probability above 1", {"probabilities": [2.0] + [0.0] * 9}, "bad_message", "probabilities"),
    ("probabilities as text", {"probabilities": "0.1"}, "bad_message", "probabilities"),
    ("verdict not a word", {"verdict": "Not A Word"}, "bad_message", "verdict"),
    ("no drawing", {"strokes": None, "surface": None}, "bad_message", "exactly one of"),
    ("two drawings", {"png": "AAAA"}, "bad_message", "exactly one of"),
    ("strokes without points", {"strokes": [[], []]}, "bad_image", "at least one point"),
    ("strokes of text", {"strokes": "1,2"}, "bad_message", "strokes"),
    ("too many points", {"strokes": [[[i, i] for i in range(1100)]]}, "bad_image", "points"),
    ("a flat surface", {"surface": [0, 10]}, "bad_image", "surface"),
    ("a surface of 1e10", {"surface": [1e10, 1]}, "bad_image", "below 1e9"),
    ("short pixels", {"strokes": None, "pixels": {"width": 3, "height": 3, "data": "AAAA"}}, "bad_image", "bytes"),
    ("huge pixels", {"strokes": None, "pixels": {"width": 5000, "height": 1, "data": ""}}, "bad_image", "limit"),
    ("not a PNG", {"strokes": None, "png": base64.b64encode(b"GIF89a" * 8).decode()}, "bad_image", "PNG"),
    ("legacy image of 3 values", {"strokes": None, "image": "1,2,3"}, "bad_image", "784"),
]


def malformed(writer_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    message = label(writer_id)
    for name, value in changes.items():
        if value is None:
            message.pop(name, None)
        else:
            message[name] = value
    return message


async def test_every_malformed_label_gets_its_documented_error_and_the_connection_goes_on(
    labelled: Labelled,
) -> None:
    me = writer()
    ws, _ = await open_ws(labelled.server.ws_url)
    async with ws:
        for number, (what, changes, code, words) in enumerate(MALFORMED):
            answer = await ask(ws, {**malformed(me, changes), "id": number})
            assert answer["type"] == "error" and answer["id"] == number, (what, answer)
            assert (answer["code"], words in answer["message"]) == (code, True), (what, answer)
            assert (await ask(ws, {"type": "ping", "id": number}))["type"] == "pong"  # still open, still in order
        assert (await ask(ws, {"type": "label", "id": "x", "digit": 7})) ["code"] == "bad_message"  # fmt: skip
        assert (await ask(ws, '{"type": "label", "id": 5, "digit": 7,')) ["code"] == "bad_json"  # fmt: skip
        # Still usable: a submit and a good label are served as ever.
        assert (await ask(ws, {"type": "submit", "id": "after", "strokes": ONE}))["type"] == "prediction"
        good = await ask(ws, {**label(me), "id": "good"})
        assert good["type"] == "stored"
    for what, changes, code, words in MALFORMED:
        body = {key: value for key, value in malformed(me, changes).items() if key != "type"}
        status, _, answer = http_json(labelled.server.http_url + "/api/labels", body)
        assert (status, answer["code"], words in answer["message"]) == (400, code, True), (what, answer)
    assert [label_id(row) for row in rows_of(labelled.export(), me)] == [good["label_id"]]


@pytest.mark.slow
async def test_a_slow_database_holds_back_only_the_replies_behind_the_label(labelled: Labelled) -> None:
    """While another client holds the write lock, a label waits its ``--label-timeout`` and is answered
    ``unavailable``; the same connection's later submit is answered after it (in order), and another
    connection's submit is answered at once."""
    server = labelled.server
    me = writer()
    sender, _ = await open_ws(server.ws_url)
    other, _ = await open_ws(server.ws_url)
    arrivals: list[tuple[str, dict[str, Any]]] = []

    async def collect(name: str, ws: ClientConnection, count: int) -> None:
        for _ in range(count):
            arrivals.append((name, await reply(ws)))

    async with sender, other:
        with writes_blocked(labelled.target):
            await sender.send(json.dumps(label(me, id="slow", key="slow-label-key")))
            await sender.send(json.dumps({"type": "submit", "id": "behind", "strokes": ONE}))
            await asyncio.sleep(0.2)  # the label has reached the store
            await other.send(json.dumps({"type": "submit", "id": "other", "strokes": ONE}))
            await asyncio.gather(collect("sender", sender, 2), collect("other", other, 1))
        assert [(name, answer["id"]) for name, answer in arrivals] == [
            ("other", "other"),
            ("sender", "slow"),
            ("sender", "behind"),
        ]
        refused = arrivals[1][1]
        assert refused["type"] == "error" and refused["code"] == "unavailable" and refused["retry_after_ms"] > 0
        assert arrivals[0][1]["type"] == arrivals[2][1]["type"] == "prediction"
        # The database answers again: the same label, sent again, is stored (once the store has seen that).
        deadline = time.monotonic() + 30
        while (answer := await ask(sender, label(me, id="again", key="slow-label-key")))["type"] != "stored":
            assert answer["code"] == "unavailable" and time.monotonic() < deadline, answer
            await asyncio.sleep(answer["retry_after_ms"] / 1000)
    assert [label_id(row) for row in rows_of(labelled.export(), me)] == [answer["label_id"]]


# One server of each kind of its own.


async def test_labels_have_their_own_rate_limits_per_connection_and_per_address(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "--label-rate", "0.01", "--label-burst", "2", "--label-rate-per-client", "0.01", "--label-burst-per-client", "3"
    )  # fmt: skip
    me = writer()
    first, hello = await open_ws(server.ws_url)
    second, _ = await open_ws(server.ws_url)
    assert (hello["limits"]["label_rate"], hello["limits"]["label_burst_per_client"]) == (0.01, 3)
    async with first, second:
        answers = [await ask(first, label(me, id=number)) for number in range(3)]
        assert [answer["type"] for answer in answers[:2]] == ["stored", "stored"]
        limited = answers[2]
        assert limited["code"] == "rate_limited" and "labels per second" in limited["message"]
        assert limited["retry_after_ms"] > 1000
        # The address's third label may come from another connection; its fourth may not.
        assert (await ask(second, label(me, id="a")))["type"] == "stored"
        assert (await ask(second, label(me, id="b")))["code"] == "rate_limited"
        # Submits draw from their own buckets.
        assert (await ask(first, {"type": "submit", "id": "s", "strokes": ONE}))["type"] == "prediction"
    status, headers, answer = http_json(server.http_url + "/api/labels", label(me))
    assert status == 429 and answer["code"] == "rate_limited" and int(headers["retry-after"]) >= 1


async def test_a_database_out_of_reach_refuses_labels_but_not_predictions(start_server) -> None:  # type: ignore[no-untyped-def]
    nowhere = f"postgres://postgres@127.0.0.1:{free_port()}/labels"
    server = start_server("--database-url", nowhere, "--label-timeout", "1")  # ready although it cannot connect
    assert http_json(server.http_url + "/readyz")[0] == 200
    ws, _ = await open_ws(server.ws_url)
    async with ws:
        refused = await ask(ws, label(writer(), id="l"))
        assert refused["type"] == "error" and refused["code"] == "unavailable" and refused["retry_after_ms"] == 2000
        assert (await ask(ws, {"type": "submit", "id": 1, "strokes": ONE}))["type"] == "prediction"
    status, headers, answer = http_json(server.http_url + "/api/labels", label(writer()))
    assert (status, answer["code"], headers["retry-after"]) == (503, "unavailable", "2")
    assert http_json(server.http_url + "/api/predict", {"strokes": ONE})[0] == 200
    assert scrape(server.http_url)["livedigit_labels_database_available"] == 0.0
    assert "labels database" in server.log() and "Traceback" not in server.log()


@pytest.mark.slow
def test_serve_on_heroku_without_a_database_url_warns_at_start(start_server) -> None:  # type: ignore[no-untyped-def]
    on_heroku = start_server(env={"DYNO": "web.1"})
    warnings = [line for line in on_heroku.log().splitlines() if "without DATABASE_URL" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING") and "heroku-postgresql" in warnings[0]
    with_database = start_server(env={"DYNO": "web.1", "DATABASE_URL": f"postgres://u@127.0.0.1:{free_port()}/x"})
    assert "without DATABASE_URL" not in with_database.log()


# Durability: a restart in the middle of many labels.


async def connect_until_up(url: str, within: float = 60.0) -> ClientConnection:
    """Connect, retrying while the server is down or restarting; the ``hello`` is read."""
    deadline = time.monotonic() + within
    while True:
        try:
            ws, _ = await open_ws(url)
            return ws
        except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_for(request, tmp_path)


@pytest.mark.slow
async def test_sigterm_halfway_through_a_thousand_labels_loses_none_that_was_acknowledged(
    target: str,
    start_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """50 clients send 1,000 labels, one at a time each; halfway the server gets SIGTERM and is started
    again on the same database. Every label answered ``stored`` is in the export exactly once, with its
    id; none answered with an error, or not answered (sent while the server was going away), is."""
    flags = [*location(target), *OPEN_LIMITS, "--max-connections-per-client", "100"]
    first = start_server(*flags)
    outcomes: dict[str, dict[str, Any] | None] = {}
    restarted = asyncio.Event()
    stored_before_restart = 0

    async def client(number: int) -> None:
        me = f"durable-{number:04d}"
        keys = [f"{me}-{index:03d}" for index in range(20)]
        ws: ClientConnection | None = None
        while keys:
            if ws is None:
                ws = await connect_until_up(first.ws_url)
            key = keys[0]
            try:
                await ws.send(json.dumps(label(me, id=key, key=key, submit_id=key)))
            except ConnectionClosed:
                ws = None  # not sent: it goes on the next connection
                continue
            keys.pop(0)
            try:
                outcomes[key] = await reply(ws)
            except ConnectionClosed:
                outcomes[key] = None  # sent, and the server went away without an answer
                ws = None
            await asyncio.sleep(random.uniform(0.0, 0.02))
        if ws is not None:
            await ws.close()

    async def restart() -> None:
        nonlocal stored_before_restart
        while sum(1 for o in outcomes.values() if o and o["type"] == "stored") < 500:
            await asyncio.sleep(0.005)
        first.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.process.wait, 60) == 0
        log = first.log()
        assert "Traceback" not in log and "not committed" not in log, first.tail()
        stored_before_restart = sum(1 for o in outcomes.values() if o and o["type"] == "stored")
        await asyncio.to_thread(start_server, *flags, port=first.port)
        restarted.set()

    await asyncio.gather(restart(), *(client(number) for number in range(50)))
    assert restarted.is_set() and len(outcomes) == 1000

    stored = {key: o["label_id"] for key, o in outcomes.items() if o and o["type"] == "stored"}
    refused = {key: o["code"] for key, o in outcomes.items() if o and o["type"] == "error"}
    unanswered = {key for key, o in outcomes.items() if o is None}
    rows = exported(target, tmp_path / "labels.jsonl")
    counts = Counter(row["submit_id"] for row in rows)
    print(
        f"\n{target.split('://')[0] if '://' in target else 'sqlite'}: {len(stored)} stored "
        f"({stored_before_restart} before the restart), {len(refused)} refused {sorted(Counter(refused.values()))}, "
        f"{len(unanswered)} unanswered; {len(rows)} rows exported"
    )
    assert 500 <= stored_before_restart < len(stored)
    assert all(count == 1 for count in counts.values()), [key for key, count in counts.items() if count > 1]
    assert {row["submit_id"]: label_id(row) for row in rows} == stored
    assert not set(refused) & set(counts) and not unanswered & set(counts)


# Failure: PostgreSQL stops in the middle of a run, and comes back.


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


@pytest.mark.slow
async def test_postgresql_stopped_mid_run_costs_labels_but_no_prediction(
    own_postgres: PostgresServer,
    start_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Predictions keep flowing on their connections while labels, on others, get ``unavailable``; writes
    resume by themselves when PostgreSQL is back, and every acknowledged label is in the database once.
    The prediction round trips of each phase are printed (measured, not asserted)."""
    own_postgres.start()
    url = own_postgres.url()
    server = start_server("--database-url", url, "--label-timeout", "1", *OPEN_LIMITS)
    phase = "up"
    round_trips: dict[str, list[float]] = {"up": [], "down": [], "back": []}
    submits = answered = 0
    outcomes: dict[str, tuple[str, dict[str, Any]]] = {}

    async def predictor() -> None:
        nonlocal submits, answered
        ws, _ = await open_ws(server.ws_url)
        async with ws:
            while phase != "done":
                measured = phase
                began = time.perf_counter()
                submits += 1
                answer = await ask(ws, {"type": "submit", "id": submits, "strokes": ONE})
                assert answer["type"] == "prediction", answer
                answered += 1
                round_trips[measured].append((time.perf_counter() - began) * 1000.0)
                await asyncio.sleep(0.05)

    async def labeller(number: int) -> None:
        me = f"failover-{number:04d}"
        ws, _ = await open_ws(server.ws_url)
        async with ws:
            for index in range(100_000):
                if phase == "done":
                    return
                key = f"{me}-{index:05d}"
                sent_in = phase
                outcomes[key] = (sent_in, await ask(ws, label(me, id=key, key=key, submit_id=key)))
                await asyncio.sleep(0.1)

    def stored_while(name: str) -> int:
        return sum(1 for when, answer in outcomes.values() if when == name and answer["type"] == "stored")

    tasks = [asyncio.create_task(predictor()) for _ in range(8)] + [
        asyncio.create_task(labeller(number)) for number in range(4)
    ]
    await asyncio.sleep(3.0)
    await asyncio.to_thread(own_postgres.stop)
    phase = "down"
    await asyncio.sleep(4.0)
    await asyncio.to_thread(own_postgres.start)
    phase = "back"
    deadline = time.monotonic() + 30
    while stored_while("back") < 40 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    phase = "done"
    await asyncio.gather(*tasks)

    for name, values in round_trips.items():
        print(
            f"\nPostgreSQL {name}: {len(values)} predictions, round trip p50 {statistics.median(values):.1f} ms, "
            f"p99 {percentile(values, 0.99):.1f} ms, max {max(values):.1f} ms",
            end="",
        )
    refused = {key for key, (_, answer) in outcomes.items() if answer["type"] == "error"}
    print(f"\nlabels: {len(outcomes) - len(refused)} stored, {len(refused)} unavailable")
    assert answered == submits and all(round_trips.values())
    assert stored_while("up") > 0 and stored_while("back") >= 40
    assert refused and all(outcomes[key][1]["code"] == "unavailable" for key in refused)
    assert any(outcomes[key][0] == "down" for key in refused)
    acknowledged = {key: answer["label_id"] for key, (_, answer) in outcomes.items() if answer["type"] == "stored"}
    rows = exported(url, tmp_path / "labels.jsonl")
    assert {row["submit_id"]: label_id(row) for row in rows} == acknowledged
    assert "Traceback" not in server.log()
