"""The server's garbage collection schedule (livedigit.garbage): cyclic garbage is collected once enough has
piled up, and not before; Python's own schedule comes back when the server stops or is told to keep it."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
from hardutil import scrape
from websockets.sync.client import connect

from livedigit import garbage
from livedigit.garbage import Collections


class Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def cycles(count: int) -> list[weakref.ref[Cycle]]:
    """``count`` unreachable cycles, each with a weak reference that dies when it is collected."""
    made = [Cycle() for _ in range(count)]
    refs = [weakref.ref(cycle) for cycle in made]
    del made
    return refs


async def wait_for(condition, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(garbage, "CHECK_INTERVAL_S", 0.05)


async def test_cycles_wait_for_a_collection_until_enough_have_piled_up(quick_checks: None) -> None:
    pauses: list[float] = []
    collections = Collections(after=20_000, observe=pauses.append)
    running = asyncio.create_task(collections.run())
    try:
        assert await wait_for(lambda: not gc.isenabled())
        few = cycles(100)
        await asyncio.sleep(0.3)  # six checks
        assert any(ref() is not None for ref in few), "collected before 20,000 objects had piled up"
        # More than 20,000, and than a quarter of what the process holds (a test run holds much).
        many = cycles(max(25_000, len(gc.get_objects()) // 3))
        assert await wait_for(lambda: all(ref() is None for ref in few + many))
        assert pauses and all(pause >= 0 for pause in pauses)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert gc.isenabled()


async def test_a_collection_comes_at_least_every_ten_minutes(quick_checks: None) -> None:
    now = [0.0]
    collections = Collections(after=10**9, clock=lambda: now[0])
    running = asyncio.create_task(collections.run())
    try:
        assert await wait_for(lambda: not gc.isenabled())
        few = cycles(10)
        await asyncio.sleep(0.2)
        assert all(ref() is not None for ref in few)
        now[0] += garbage.MAX_INTERVAL_S
        assert await wait_for(lambda: all(ref() is None for ref in few))
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_after_zero_keeps_pythons_own_schedule() -> None:
    await asyncio.wait_for(Collections(after=0).run(), timeout=1)
    assert gc.isenabled()


def test_the_server_collects_what_closed_connections_leave(start_server) -> None:  # type: ignore[no-untyped-def]
    """A real server told to collect early: connections come and go, the automatic collector stays off,
    and full collections run and show on /metrics."""
    server = start_server("--collect-after", "2000")
    for _ in range(60):
        with connect(server.ws_url) as socket:
            socket.recv(timeout=10)  # the hello
    for _ in range(100):
        if scrape(server.http_url).get("livedigit_garbage_collection_seconds_count", 0) >= 1:
            break
        time.sleep(0.05)
    assert scrape(server.http_url)["livedigit_garbage_collection_seconds_count"] >= 1
