"""Reading in turns once the event loop is saturated: readers go in order, and the pacing ends by itself."""

from __future__ import annotations

import asyncio

import pytest

from livedigit.readpacer import FASTEST, MIN_RATE, SLOWER, WINDOW_S, ReadPacer


async def test_readers_read_at_once_while_the_loop_has_time_to_spare() -> None:
    pacer = ReadPacer(busy=0.95)
    assert [pacer.turn() for _ in range(1000)] == [None] * 1000
    pacer.adjust(busy=0.7, read_rate=10_000.0)
    assert pacer.rate is None and pacer.turn() is None


async def test_on_a_saturated_loop_readers_take_turns_in_the_order_they_asked() -> None:
    pacer = ReadPacer(busy=0.95)
    pacer.adjust(busy=0.99, read_rate=5_000.0)
    assert pacer.rate == pytest.approx(SLOWER * 5_000.0)
    turns = [pacer.turn() for _ in range(30)]
    assert all(turn is not None for turn in turns) and pacer.waiting == 30
    turns[1].cancel()  # type: ignore[union-attr]  # that reader went away: its turn passes to the next
    pacer.release(0.0025)  # 4,000 frames/s for 2.5 ms: ten turns
    done = [index for index, turn in enumerate(turns) if turn is not None and turn.done() and not turn.cancelled()]
    assert done == [0, *range(2, 11)]
    pacer.adjust(busy=1.0, read_rate=50.0)  # still saturated, hardly anything read: never below the floor
    assert pacer.rate == MIN_RATE
    crowd = [pacer.turn() for _ in range(500)]  # nor below a turn a second for each connection waiting
    pacer.adjust(busy=1.0, read_rate=50.0)
    assert pacer.rate == pacer.waiting == 500 + 19 and len(crowd) == 500  # the 19 turns not yet given


async def test_the_rate_grows_back_and_the_pacing_ends_when_nobody_waits() -> None:
    pacer = ReadPacer(busy=0.95)
    pacer.adjust(busy=0.99, read_rate=1_000.0)
    waiting = pacer.turn()
    pacer.adjust(busy=0.76, read_rate=800.0)  # time to spare: the rate grows in proportion to it
    assert pacer.rate == pytest.approx(SLOWER * 1_000.0 * 0.95 / 0.76)
    pacer.adjust(busy=0.05, read_rate=800.0)  # but at most doubles
    assert pacer.rate == pytest.approx(SLOWER * 1_000.0 * 0.95 / 0.76 * FASTEST)
    assert waiting is not None and not waiting.done()
    pacer.release(1.0)
    assert waiting.done() and pacer.waiting == 0
    pacer.adjust(busy=0.5, read_rate=1.0)
    assert pacer.rate is None and pacer.turn() is None


async def test_the_pacers_clock_follows_the_event_loops_cpu() -> None:
    """:meth:`ReadPacer.run` reads the loop thread's CPU clock (here one that runs as fast as the wall
    clock while ``saturated`` is set, and stands still otherwise): a saturated half second starts the
    pacing, and a calm one with nobody waiting ends it."""
    loop = asyncio.get_running_loop()
    saturated = False
    cpu = 0.0
    last = loop.time()

    def cpu_clock() -> float:
        nonlocal cpu, last
        now = loop.time()
        cpu += (now - last) if saturated else 0.0
        last = now
        return cpu

    pacer = ReadPacer(busy=0.95, cpu_clock=cpu_clock)
    clock = asyncio.create_task(pacer.run())
    try:
        async with asyncio.timeout(10 * WINDOW_S):
            await asyncio.sleep(0)
            saturated = True
            while pacer.rate is None:
                await asyncio.sleep(0.01)
            turn = pacer.turn()
            assert turn is not None
            await turn  # let go by the clock's ticks
            saturated = False
            while pacer.rate is not None:
                await asyncio.sleep(0.01)
        assert pacer.turn() is None
    finally:
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)


async def test_a_share_of_zero_never_paces() -> None:
    pacer = ReadPacer(busy=0.0)
    await asyncio.wait_for(pacer.run(), 1.0)  # returns at once: no clock
    pacer.adjust(busy=1.0, read_rate=1_000.0)
    assert pacer.rate is None and pacer.turn() is None
