"""A connection's outbox: its replies in order, at most its size, and a cancelled wait that loses nothing."""

from __future__ import annotations

import asyncio

from livedigit.session import Outbox


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_come_out_in_the_order_they_went_in_and_a_get_waits_for_one() -> None:
    outbox = Outbox(4)
    taking = asyncio.ensure_future(outbox.get())
    await settle()
    assert not taking.done()
    for item in ("a", "b", "c"):
        await outbox.put(item)
    assert await taking == "a"
    assert [await outbox.get(), await outbox.get()] == ["b", "c"] and len(outbox) == 0


async def test_a_full_outbox_holds_its_putters_back_until_a_get_makes_room_one_at_a_time() -> None:
    outbox = Outbox(2)
    await outbox.put(1)
    await outbox.put(2)
    third, fourth = asyncio.ensure_future(outbox.put(3)), asyncio.ensure_future(outbox.put(4))
    await settle()
    assert not third.done() and not fourth.done() and len(outbox) == 2
    assert await outbox.get() == 1
    await settle()
    assert third.done() and not fourth.done() and len(outbox) == 2
    assert await outbox.get() == 2
    await settle()
    assert fourth.done()
    assert [await outbox.get(), await outbox.get()] == [3, 4]


async def test_a_putter_cancelled_after_its_turn_came_passes_the_turn_on() -> None:
    """Shutdown puts its last item with a timeout: a put cancelled just as room was made must not leave
    the other putter waiting for a get that never comes."""
    outbox = Outbox(1)
    await outbox.put("owed")
    first, second = asyncio.ensure_future(outbox.put("first")), asyncio.ensure_future(outbox.put("second"))
    await settle()
    assert await outbox.get() == "owed"  # the first putter's turn...
    first.cancel()  # ...but it is cancelled before it runs
    await settle()
    assert first.cancelled() and second.done()
    assert await outbox.get() == "second" and len(outbox) == 0


async def test_a_putter_cancelled_while_waiting_is_forgotten() -> None:
    outbox = Outbox(1)
    await outbox.put("owed")
    gone, staying = asyncio.ensure_future(outbox.put("gone")), asyncio.ensure_future(outbox.put("staying"))
    await settle()
    gone.cancel()
    await settle()
    assert await outbox.get() == "owed"
    await settle()
    assert staying.done() and await outbox.get() == "staying" and len(outbox) == 0


async def test_a_cancelled_get_leaves_the_next_item_for_the_next_get() -> None:
    outbox = Outbox(2)
    taking = asyncio.ensure_future(outbox.get())
    await settle()
    taking.cancel()
    await settle()
    await outbox.put("kept")
    assert taking.cancelled() and await outbox.get() == "kept"
