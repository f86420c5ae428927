"""The batcher with the real model: latest wins, submits are never dropped, overload and failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from modelutil import raw_outputs

from livedigit.batcher import IN_FLIGHT, Batcher
from livedigit.metrics import Metrics
from livedigit.preprocess import Limits, Pixels, Strokes, preprocess
from livedigit.verdict import VerdictRule
from livedigit.wire import DropReason, Failed, Failure, NoDigit, Scored, Shed

ONE = Strokes([[[50, 10], [52, 60], [51, 110]]])
SEVEN = Strokes([[[10, 10], [90, 10], [40, 110]]])


def ink(seed: int) -> Pixels:
    """A distinct drawing per seed: a thick bar at a seed-dependent angle."""
    image = np.zeros((28, 28), np.uint8)
    for step in range(20):
        x = 4 + step
        y = 4 + (step * (seed % 7 + 1)) % 20
        image[y : y + 3, x : x + 3] = 255
    return Pixels(image)


class Owner:
    """Stands for a connection (the batcher only needs a hashable identity)."""


MakeBatcher = Callable[..., Awaitable[Batcher]]


@pytest.fixture
async def make_batcher(pausable_runtime) -> AsyncIterator[MakeBatcher]:  # type: ignore[no-untyped-def]
    batchers: list[Batcher] = []

    async def make(**options: object) -> Batcher:
        """A batcher whose worker is a thread of this process: the only place the test's runtime can run."""
        batcher = Batcher(pausable_runtime, Metrics(), limits=Limits(), workers=0, **options)  # type: ignore[arg-type]
        await batcher.start()
        batchers.append(batcher)
        return batcher

    yield make
    pausable_runtime.resume()
    for batcher in batchers:
        await batcher.stop()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def model_blocked(runtime) -> None:  # type: ignore[no-untyped-def]
    assert await asyncio.to_thread(runtime.blocked.wait, 10), "the model was never called"


async def test_latest_snapshot_wins_and_stale_ones_are_never_preprocessed(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher()
    owner = Owner()
    pausable_runtime.pause()
    first = batcher.enqueue("snapshot", ink(0), owner)
    await model_blocked(pausable_runtime)
    second = batcher.enqueue("snapshot", ink(1), owner)
    await until(lambda: batcher.queued == (0, 0))  # taken into the next batch: committed
    later = [batcher.enqueue("snapshot", ink(seed), owner) for seed in range(2, 12)]
    assert all(future.done() for future in later[:-1]) and not later[-1].done()
    assert batcher.queued == (1, 0)
    pausable_runtime.resume()
    outcomes = await asyncio.gather(first, second, *later)
    assert isinstance(outcomes[0], Scored) and isinstance(outcomes[1], Scored)
    assert isinstance(outcomes[-1], Scored)
    assert outcomes[2:-1] == [Shed(DropReason.STALE)] * 9
    assert sample_count(batcher.metrics.preprocess) == 3


def sample_count(histogram) -> float:  # type: ignore[no-untyped-def]
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))


async def test_submits_are_never_dropped_or_merged(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=4)
    owner = Owner()
    pausable_runtime.pause()
    snapshot = batcher.enqueue("snapshot", ink(0), owner)
    await model_blocked(pausable_runtime)
    submits = [batcher.enqueue("submit", ink(seed), owner) for seed in range(12)]
    snapshots = [batcher.enqueue("snapshot", ink(seed), owner) for seed in range(5)]
    pausable_runtime.resume()
    results = await asyncio.gather(*submits)
    assert all(isinstance(result, Scored) for result in results)
    assert isinstance(await snapshot, Scored)
    assert isinstance(await snapshots[-1], Scored)
    # Each submit got the prediction for its own image, not a neighbour's.
    direct = raw_outputs(pausable_runtime.runtime, [ink(seed) for seed in range(12)])
    np.testing.assert_allclose([r.probabilities for r in results], direct, atol=1e-5)


async def test_every_batch_is_calibrated_and_judged_by_the_rule_it_was_given(make_batcher, pausable_runtime) -> None:
    """A batch of drawings: each gets its own calibrated probabilities and verdict, as the rule says."""
    rule = VerdictRule(temperature=2.0, reject_temperature=3.0, reject_below=0.3, unsure_margin=0.6)
    batcher = await make_batcher(max_batch=16, verdict=rule)
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0))
    await model_blocked(pausable_runtime)
    images = [ONE, SEVEN, *(ink(seed) for seed in range(1, 9))]
    futures = [batcher.enqueue("submit", image) for image in images]
    pausable_runtime.resume()
    await blocker
    outcomes = await asyncio.gather(*futures)
    assert all(isinstance(outcome, Scored) for outcome in outcomes)
    assert max(pausable_runtime.batch_sizes) == len(images)
    inputs = np.stack([preprocess(image, Limits()) for image in images])  # type: ignore[arg-type]
    raw = raw_outputs(pausable_runtime.runtime, images)  # type: ignore[arg-type]
    served, verdicts = rule.judge(raw)
    np.testing.assert_allclose([outcome.probabilities for outcome in outcomes], served, atol=1e-6)
    assert [outcome.verdict for outcome in outcomes] == verdicts
    for outcome, model_input in zip(outcomes, inputs, strict=True):  # the model input as a reply's preview shows it
        np.testing.assert_array_equal(outcome.preview, np.clip(np.rint(model_input * 255), 0, 255))
        assert outcome.preview.dtype == np.uint8
    assert len(set(verdicts)) > 1, "these drawings should not all get the same verdict"


def finishing_order(futures: dict[str, list[asyncio.Future]]) -> list[str]:  # type: ignore[type-arg]
    """The names of the futures in the order they resolve (within a batch: the batch's own order)."""
    finished: list[str] = []
    for name, group in futures.items():
        for future in group:
            future.add_done_callback(lambda _, name=name: finished.append(name))
    return finished


def batches(finished: list[str], sizes: list[int]) -> list[list[str]]:
    chunks, start = [], 0
    for size in sizes:
        chunks.append(finished[start : start + size])
        start += size
    return chunks


async def test_snapshots_go_first_and_waiting_submits_keep_their_share(make_batcher, pausable_runtime) -> None:
    """Eight people's snapshots and a script's eight submits wait together: every batch holds at least a
    quarter of submits (one in four), the snapshots take the rest, and no snapshot waits behind the
    script's backlog."""
    batcher = await make_batcher(max_batch=4, submit_share=0.25, live_batch_ms=1e6)  # only the share under test
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0), Owner(), client="script")
    await model_blocked(pausable_runtime)
    script = Owner()
    snapshots = [batcher.enqueue("snapshot", ink(i), Owner(), client=f"person-{i}") for i in range(8)]
    submits = [batcher.enqueue("submit", ink(i), script, client="script") for i in range(8)]
    finished = finishing_order({"snapshot": snapshots, "submit": submits})
    pausable_runtime.resume()
    await asyncio.gather(blocker, *snapshots, *submits)
    taken = batches(finished, pausable_runtime.batch_sizes[2:])  # after the warm-up and the blocker
    assert taken[:3] == [["snapshot"] * 3 + ["submit"]] * 2 + [["snapshot"] * 2 + ["submit"] * 2], taken
    assert all(batch == ["submit"] * len(batch) for batch in taken[3:]), taken


async def test_snapshots_are_taken_one_per_address_before_a_second(make_batcher, pausable_runtime) -> None:
    """Six connections behind one address (a school's NAT) and one person at home: the next batch holds
    the person's snapshot although it came last, beside the school's first three in line order; the
    school's others follow in line order."""
    batcher = await make_batcher(max_batch=4, live_batch_ms=1e6)
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0), Owner(), client="script")
    await model_blocked(pausable_runtime)
    school = [batcher.enqueue("snapshot", ink(i), Owner(), client="school") for i in range(6)]
    home = batcher.enqueue("snapshot", ink(7), Owner(), client="home")
    finished = finishing_order({f"school-{i}": [future] for i, future in enumerate(school)} | {"home": [home]})
    pausable_runtime.resume()
    await asyncio.gather(blocker, home, *school)
    taken = batches(finished, pausable_runtime.batch_sizes[2:])  # after the warm-up and the blocker
    assert taken == [["school-0", "home", "school-1", "school-2"], ["school-3", "school-4", "school-5"]], taken


def test_slots_keep_a_replaced_item_in_place_and_count_the_addresses() -> None:
    from livedigit.fairness import Slots

    class Item:
        def __init__(self, client: str, owner: str, name: str) -> None:
            self.client, self.owner, self.name = client, owner, name

    slots: Slots[Item] = Slots()
    for client, owner in (("A", "conn-1"), ("A", "conn-2"), ("B", "conn-3")):
        assert slots.put(Item(client, owner, f"{owner}-old")) is None
    replaced = slots.put(Item("A", "conn-1", "conn-1-new"))
    assert replaced is not None and replaced.name == "conn-1-old"
    assert [item.name for item in slots] == ["conn-1-new", "conn-2-old", "conn-3-old"]
    assert (len(slots), slots.clients) == (3, 2)
    assert slots.pop("conn-3") is not None and slots.clients == 1
    assert slots.pop("conn-3") is None
    assert slots.pop("conn-1") is not None and slots.clients == 1
    assert slots.pop("conn-2") is not None and not slots and slots.clients == 0


async def test_a_persons_submit_goes_first_once_per_connection(make_batcher, pausable_runtime) -> None:
    """The Submit of a connection that has been drawing goes in the next batch ahead of other people's
    snapshots and a script's backlog, and answers its own queued snapshot ``stale``. A second submit of
    that connection, and the submits of a connection that never drew, wait with the other submits."""
    batcher = await make_batcher(max_batch=4, submit_share=0.25, live_batch_ms=1e6)
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0), Owner(), client="script")
    await model_blocked(pausable_runtime)
    person, script = Owner(), Owner()
    drawn = batcher.enqueue("snapshot", ink(1), person, client="person")
    others = [batcher.enqueue("snapshot", ink(i), Owner(), client=f"other-{i}") for i in range(6)]
    backlog = [batcher.enqueue("submit", ink(i), script, client="script", final=True) for i in range(6)]
    answer = batcher.enqueue("submit", ink(2), person, client="person", final=True)
    again = batcher.enqueue("submit", ink(3), person, client="person", final=True)
    assert drawn.done() and drawn.result() == Shed(DropReason.STALE)
    finished = finishing_order({"answer": [answer], "again": [again], "snapshot": others, "submit": backlog})
    pausable_runtime.resume()
    await asyncio.gather(blocker, answer, again, *others, *backlog)
    taken = batches(finished, pausable_runtime.batch_sizes[2:])  # after the warm-up and the blocker
    assert taken[0][:3] == ["answer", "snapshot", "snapshot"], taken
    assert sorted(name for batch in taken for name in batch) == sorted(
        ["answer", "again", *["snapshot"] * 6, *["submit"] * 6]
    )


async def test_with_a_submit_share_of_one_submits_go_first(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=2, submit_share=1.0)
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0))
    await model_blocked(pausable_runtime)
    snapshots = [batcher.enqueue("snapshot", ink(i), Owner()) for i in range(4)]
    submits = [batcher.enqueue("submit", ink(i)) for i in range(4)]
    finished = finishing_order({"snapshot": snapshots, "submit": submits})
    pausable_runtime.resume()
    await asyncio.gather(blocker, *snapshots, *submits)
    # The snapshots were queued first, yet every batch took the submits before them.
    assert finished == ["submit"] * 4 + ["snapshot"] * 4


@pytest.mark.parametrize("drawing", [False, True])
async def test_submits_fill_whole_batches_unless_people_are_drawing(make_batcher, pausable_runtime, drawing) -> None:
    """Work conserving: a lone script gets full batches; while a snapshot has arrived within the last
    second, submits fill batches only up to live_batch_ms of work (here so little that it is one image
    beside the snapshot's batch), so a drawer's next frame waits behind less."""
    batcher = await make_batcher(max_batch=16, live_batch_ms=0.0)
    assert batcher.live_images == 1
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0), Owner(), client="script")
    await model_blocked(pausable_runtime)
    script = Owner()
    live = [batcher.enqueue("snapshot", ink(1), Owner(), client="person")] if drawing else []
    submits = [batcher.enqueue("submit", ink(i), script, client="script") for i in range(32)]
    pausable_runtime.resume()
    await asyncio.gather(blocker, *live, *submits)
    expected = [2] + [1] * 31 if drawing else [16, 16]  # the snapshot and a submit, then one at a time
    assert pausable_runtime.batch_sizes[2:] == expected  # after the warm-up and the blocker


async def test_one_address_may_queue_only_its_share_of_the_submits(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=1, max_pending_submits=8, max_pending_per_client=3)
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0), Owner(), client="a")
    await model_blocked(pausable_runtime)
    taken = batcher.enqueue("submit", ink(1), Owner(), client="a")
    await until(lambda: batcher.queued == (0, 0))
    owner = Owner()
    accepted = [batcher.enqueue("submit", ink(seed), owner, client="a") for seed in range(3)]
    assert batcher.room("a") == 0 and batcher.room("b") == 3
    refused = batcher.enqueue("submit", ink(4), owner, client="a")
    other = batcher.enqueue("submit", ink(5), Owner(), client="b")
    assert refused.done() and refused.result().failure == Failure.BUSY  # type: ignore[union-attr]
    assert 0 < refused.result().retry_after <= 5.0  # type: ignore[union-attr]
    assert not other.done()
    pausable_runtime.resume()
    outcomes = await asyncio.gather(blocker, taken, other, *accepted)
    assert all(isinstance(outcome, Scored) for outcome in outcomes)


async def test_a_waiting_snapshot_past_its_deadline_is_shed_as_overloaded(make_batcher, pausable_runtime) -> None:
    """With the model busy and every feed holding a batch (the first feed's is in the model), a snapshot
    waits in the queue."""
    batcher = await make_batcher(max_batch=1, snapshot_deadline=0.2)
    pausable_runtime.pause()
    busy = batcher.enqueue("submit", ink(0))
    await model_blocked(pausable_runtime)
    next_batches = [batcher.enqueue("submit", ink(seed)) for seed in range(1, IN_FLIGHT)]
    await until(lambda: batcher.queued == (0, 0) and batcher.in_flight == IN_FLIGHT)
    late = batcher.enqueue("snapshot", ink(9), Owner())
    await asyncio.sleep(0.3)
    pausable_runtime.resume()
    assert await late == Shed(DropReason.OVERLOADED)
    assert all(isinstance(outcome, Scored) for outcome in await asyncio.gather(busy, *next_batches))


async def test_submits_beyond_the_pending_limit_are_refused(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=1, max_pending_submits=8)
    pausable_runtime.pause()
    accepted = [batcher.enqueue("submit", ink(0))]
    await model_blocked(pausable_runtime)
    accepted.append(batcher.enqueue("submit", ink(1)))
    await until(lambda: batcher.queued == (0, 0))
    # One address holds at most three quarters of the queue; the rest stays open to the others.
    accepted += [batcher.enqueue("submit", ink(seed), client="busy") for seed in range(6)]
    greedy = batcher.enqueue("submit", ink(4), client="busy")
    assert greedy.done() and isinstance(greedy.result(), Failed) and greedy.result().failure == Failure.BUSY
    accepted += [batcher.enqueue("submit", ink(seed), client=f"other-{seed}") for seed in range(2)]
    refused = batcher.enqueue("submit", ink(4), client="late")
    assert refused.done() and isinstance(refused.result(), Failed)
    assert refused.result().failure == Failure.BUSY
    pausable_runtime.resume()
    assert all(isinstance(outcome, Scored) for outcome in await asyncio.gather(*accepted))


async def test_a_model_failure_answers_internal_and_the_batcher_recovers(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher()
    assert batcher.ready
    pausable_runtime.fail = True
    outcomes = await asyncio.gather(*(batcher.enqueue("submit", ink(seed)) for seed in range(3)))
    assert {type(outcome) for outcome in outcomes} == {Failed}
    assert {outcome.failure for outcome in outcomes} == {Failure.MODEL_FAILED}  # type: ignore[union-attr]
    assert not batcher.ready
    pausable_runtime.fail = False
    assert isinstance(await batcher.enqueue("submit", ink(0)), Scored)
    assert batcher.ready


async def test_empty_and_invalid_drawings_are_answered_without_the_model(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher()
    calls = len(pausable_runtime.batch_sizes)
    blank = await batcher.enqueue("submit", Pixels(np.zeros((28, 28), np.uint8)))
    dot = await batcher.enqueue("submit", Strokes([[[5, 5]]], surface=(280, 280)))
    nan = await batcher.enqueue("submit", Strokes([[[0, 0], [float("nan"), 1]]]))
    assert blank == NoDigit() and dot == NoDigit()
    assert isinstance(nan, Failed) and nan.failure == Failure.BAD_IMAGE and "stroke 0" in nan.detail
    assert len(pausable_runtime.batch_sizes) == calls


async def test_forget_releases_everything_of_a_connection(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=1)
    gone, other = Owner(), Owner()
    pausable_runtime.pause()
    in_model = batcher.enqueue("snapshot", ink(0), gone)
    await model_blocked(pausable_runtime)
    taken = batcher.enqueue("submit", ink(1), gone)
    await until(lambda: batcher.queued == (0, 0))
    queued = [
        batcher.enqueue("snapshot", ink(2), gone),
        batcher.enqueue("submit", ink(3), gone, final=True),  # a person's Submit: it goes first
        batcher.enqueue("submit", ink(3), gone),
    ]
    kept = batcher.enqueue("submit", ink(4), other)
    assert batcher.queued == (0, 3)
    batcher.forget(gone)
    assert all(future.done() for future in queued) and batcher.queued == (0, 1)
    pausable_runtime.resume()
    assert isinstance(await kept, Scored)
    assert await taken == Shed(DropReason.STALE)  # taken into a batch before its connection went
    await in_model
    assert batcher.in_flight == 0 and batcher.queued == (0, 0)


async def test_concurrent_items_share_batches(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=8)
    pausable_runtime.pause()
    first = batcher.enqueue("submit", ink(0))
    await model_blocked(pausable_runtime)
    owners = [Owner() for _ in range(20)]
    rest = [batcher.enqueue("snapshot", ink(i), owner) for i, owner in enumerate(owners)]
    pausable_runtime.resume()
    await asyncio.gather(first, *rest)
    assert max(pausable_runtime.batch_sizes) == 8
    assert sum(pausable_runtime.batch_sizes[-4:]) == 21


async def test_the_worker_goes_on_to_the_next_batch_while_the_event_loop_is_busy(
    make_batcher, pausable_runtime
) -> None:
    """A worker starts the next batch sent to it as soon as it finishes the one before, without waiting
    for the event loop (which may be busy with hundreds of sockets) to take the results of the first."""
    batcher = await make_batcher(max_batch=1)
    pausable_runtime.pause()
    first = batcher.enqueue("submit", ink(0))
    await model_blocked(pausable_runtime)
    second = batcher.enqueue("submit", ink(1))
    await until(lambda: batcher.queued == (0, 0) and batcher.in_flight == 2)  # sent to the worker
    calls = len(pausable_runtime.batch_sizes)  # the warm-up's so far; the first batch waits at the gate
    pausable_runtime.resume()
    deadline = time.monotonic() + 10
    while len(pausable_runtime.batch_sizes) < calls + 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # the event loop is held: nothing of the batcher's on it can run
    assert pausable_runtime.batch_sizes[calls:] == [1, 1]
    assert all(isinstance(outcome, Scored) for outcome in await asyncio.gather(first, second))


async def test_stop_answers_everything_still_queued(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=1)
    pausable_runtime.pause()
    futures = [batcher.enqueue("submit", ink(seed)) for seed in range(4)]
    await model_blocked(pausable_runtime)
    await batcher.stop()
    pausable_runtime.resume()
    outcomes = [future.result() for future in futures]
    assert all(isinstance(outcome, Failed) and outcome.failure == Failure.SHUTTING_DOWN for outcome in outcomes)
    assert isinstance(batcher.enqueue("submit", ONE).result(), Failed)


async def test_a_submit_overtakes_the_queued_snapshot_of_its_connection(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher(max_batch=1)
    drawer, bystander = Owner(), Owner()
    pausable_runtime.pause()
    busy = batcher.enqueue("submit", ink(0))
    await model_blocked(pausable_runtime)
    mine = batcher.enqueue("snapshot", ink(1), drawer)
    theirs = batcher.enqueue("snapshot", ink(2), bystander)
    final = batcher.enqueue("submit", ink(3), drawer)
    assert mine.done() and mine.result() == Shed(DropReason.STALE)
    assert not theirs.done()
    pausable_runtime.resume()
    assert isinstance(await final, Scored) and isinstance(await theirs, Scored)
    await busy


async def test_a_bystanders_submit_goes_before_the_backlog_of_another_address(make_batcher, pausable_runtime) -> None:
    """Forty submits from one address's connections are queued; a submit from another address that
    arrives after them is in the very next batch, and the busy address still gets its share."""
    batcher = await make_batcher(max_batch=4)
    pausable_runtime.pause()
    blocker = batcher.enqueue("submit", ink(0), Owner(), client="10.0.0.1")
    await model_blocked(pausable_runtime)
    crowd = [Owner() for _ in range(8)]
    backlog = [batcher.enqueue("submit", ink(seed), crowd[seed % 8], client="10.0.0.1") for seed in range(40)]
    mine = batcher.enqueue("submit", ink(3), Owner(), client="10.0.0.2")
    pausable_runtime.resume()
    assert isinstance(await mine, Scored) and isinstance(await blocker, Scored)
    finished_before_mine = sum(future.done() for future in backlog)
    # The batch being preprocessed while the model was blocked took up to max_batch of the backlog;
    # the next one has the bystander's submit in it.
    assert finished_before_mine <= 2 * 4, finished_before_mine
    assert all(isinstance(outcome, Scored) for outcome in await asyncio.gather(*backlog))


async def test_an_expensive_image_goes_in_a_batch_of_its_own(make_batcher, pausable_runtime) -> None:
    batcher = await make_batcher()
    pausable_runtime.pause()
    first = batcher.enqueue("submit", ink(0), Owner(), client="a")
    await model_blocked(pausable_runtime)
    writer = Owner()
    cheap = [batcher.enqueue("submit", ink(seed), writer, client="c") for seed in range(5)]
    large = Pixels(np.pad(ink(1).array, ((0, 484), (0, 484))))  # 512x512: 64 snapshots' work
    heavy = batcher.enqueue("submit", large, Owner(), client="b")  # a newly waiting address goes first
    pausable_runtime.resume()
    await asyncio.gather(first, heavy, *cheap)
    assert pausable_runtime.batch_sizes[-3:] == [1, 1, 5]  # the blocked one, the large one alone, the rest


def test_fair_queue_serves_the_least_recently_served_address_first() -> None:
    from livedigit.fairness import FairQueue

    class Item:
        def __init__(self, client: str, owner: str, name: str) -> None:
            self.client, self.owner, self.name = client, owner, name

    queue: FairQueue[Item] = FairQueue()
    for name in ("a1", "a2", "a3"):
        queue.push(Item("A", "conn-1", name))
    queue.push(Item("A", "conn-2", "a4"))
    assert queue.pop().name == "a4"  # conn-2 arrived with nothing queued: served before conn-1's backlog
    queue.push(Item("B", "conn-3", "b1"))
    assert [queue.pop().name for _ in range(2)] == ["b1", "a1"]
    queue.push(Item("C", "conn-4", "c1"))
    queue.push(Item("C", "conn-4", "c2"))
    assert [queue.pop().name for _ in range(3)] == ["c1", "a2", "c2"]
    assert [item.name for item in queue.remove_owner("conn-1")] == ["a3"]
    assert not queue and len(queue) == 0


def test_fair_queue_finds_the_first_item_it_is_asked_for_in_fair_order() -> None:
    """Only each connection's next item is looked at; taking it moves its connection and address back."""
    from livedigit.fairness import FairQueue

    class Item:
        def __init__(self, client: str, owner: str, name: str) -> None:
            self.client, self.owner, self.name = client, owner, name

    queue: FairQueue[Item] = FairQueue()
    for client, owner, name in [("A", "a1", "big-1"), ("A", "a1", "small-1"), ("A", "a2", "big-2")]:
        queue.push(Item(client, owner, name))
    queue.push(Item("B", "b", "big-3"))  # B goes first: its address has waited longest
    queue.push(Item("A", "a3", "small-2"))
    small = queue.first(lambda item: item.name.startswith("small"))
    assert small is not None and small.name == "small-2"  # a1's small-1 waits behind its own big-1
    assert queue.pop(small) is small and queue.first(lambda item: item.name.startswith("small")) is None
    assert [queue.pop().name for _ in range(4)] == ["big-3", "big-2", "big-1", "small-1"]
    assert not queue


async def test_a_model_that_fails_on_the_blank_digit_stops_start_up(pausable_runtime) -> None:
    """The warm-up is the model's first call: a model that raises there never serves, and says why."""
    pausable_runtime.fail = True
    batcher = Batcher(pausable_runtime, Metrics(), limits=Limits(), workers=0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="injected model failure"):
        await batcher.start()
    assert not batcher.ready
    assert isinstance(batcher.enqueue("submit", ONE).result(), Failed)


def test_a_runtime_object_cannot_be_sent_to_a_worker_process(pausable_runtime) -> None:
    with pytest.raises(ValueError, match="workers=0"):
        Batcher(pausable_runtime, Metrics(), limits=Limits(), workers=1)  # type: ignore[arg-type]
