"""The scheduler's queue on a fake clock: ordering, aging, shedding, deadlines, cancel."""

from __future__ import annotations

import asyncio

import pytest

from llmservice.kernel.errors import DeadlineExceeded, ResourceExhausted
from llmservice.kernel.scheduler import Queue, Scheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def busy_queue(clock: FakeClock, *, slots: int = 1, max_waiting: int = 8, aging_s: float = 10.0) -> Queue:
    queue = Queue(slots, max_waiting, aging_s, clock)
    for _ in range(slots):
        queue.arrive(5)  # every slot taken
    return queue


def test_a_free_slot_is_granted_at_once() -> None:
    queue = Queue(2, 8, 10.0, FakeClock())
    first, second, third = queue.arrive(3), queue.arrive(3), queue.arrive(3)
    assert queue.busy == 2
    assert queue.waiting == [third]
    assert first.error is None
    assert second.error is None


def test_lower_priority_number_runs_first_then_arrival() -> None:
    clock = FakeClock()
    queue = busy_queue(clock)
    late_background = queue.arrive(10)
    clock.now += 1
    interactive = queue.arrive(0)
    clock.now += 1
    interactive_2 = queue.arrive(0)
    order = []
    for _ in range(3):
        order += queue.release(held_s=1.0)
    assert order == [interactive, interactive_2, late_background]


def test_waiting_ages_background_work_so_it_is_not_starved() -> None:
    clock = FakeClock()
    queue = busy_queue(clock, aging_s=10.0)
    background = queue.arrive(10)
    clock.now += 95  # 9 steps of aging: effectively priority 1
    fresh = queue.arrive(2)
    assert queue.release(held_s=1.0) == [background]
    assert queue.release(held_s=1.0) == [fresh]


def test_a_full_queue_sheds_the_least_urgent_waiter_with_a_retry_hint() -> None:
    clock = FakeClock()
    queue = busy_queue(clock, max_waiting=2)
    background = queue.arrive(10)
    normal = queue.arrive(5)
    urgent = queue.arrive(0)
    assert isinstance(background.error, ResourceExhausted)
    assert background.error.retry_after_s is not None
    assert background.error.retry_after_s >= 1
    assert queue.waiting == [normal, urgent]
    assert queue.stats[10].shed == 1


def test_a_full_queue_refuses_a_newcomer_less_urgent_than_everyone() -> None:
    clock = FakeClock()
    queue = busy_queue(clock, max_waiting=1)
    waiting = queue.arrive(3)
    newcomer = queue.arrive(9)
    assert isinstance(newcomer.error, ResourceExhausted)
    assert queue.waiting == [waiting]


def test_a_waiter_past_its_deadline_leaves_with_deadline_exceeded() -> None:
    clock = FakeClock()
    queue = busy_queue(clock)
    hurried = queue.arrive(0, deadline=clock.now + 5)
    patient = queue.arrive(5)
    clock.now += 6
    assert queue.release(held_s=1.0) == [patient]
    assert isinstance(hurried.error, DeadlineExceeded)
    assert queue.stats[0].expired == 1


def test_a_cancelled_waiter_leaves_at_once() -> None:
    clock = FakeClock()
    queue = busy_queue(clock)
    leaving, staying = queue.arrive(0), queue.arrive(5)
    queue.leave(leaving)
    assert queue.waiting == [staying]
    assert queue.stats[0].depth == 0
    assert queue.release(held_s=1.0) == [staying]


def test_depth_and_wait_per_priority_are_counted() -> None:
    clock = FakeClock()
    queue = busy_queue(clock)
    queue.arrive(0)
    queue.arrive(0)
    assert queue.stats[0].depth == 2
    clock.now += 4
    queue.release(held_s=4.0)
    assert queue.stats[0].depth == 1
    assert queue.stats[0].admitted == 1
    assert queue.stats[0].wait_max_s == 4


async def test_scheduler_slots_hand_over_in_priority_order() -> None:
    clock = FakeClock()
    scheduler = Scheduler(1, clock=clock)
    order: list[str] = []
    gate = asyncio.Event()

    async def run(name: str, priority: int) -> None:
        async with scheduler.slot(priority):
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(run("first", 5))
    await asyncio.sleep(0)
    others = [asyncio.create_task(run(n, p)) for n, p in (("background", 10), ("interactive", 0))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *others)
    assert order == ["first", "interactive", "background"]


async def test_scheduler_cancel_while_queued_frees_the_place() -> None:
    scheduler = Scheduler(1, clock=FakeClock())
    hold = asyncio.Event()

    async def holder() -> None:
        async with scheduler.slot(5):
            await hold.wait()

    holding = asyncio.create_task(holder())
    await asyncio.sleep(0)

    async def queued() -> None:
        async with scheduler.slot(0):
            pytest.fail("a cancelled waiter must never run")

    waiting = asyncio.create_task(queued())
    await asyncio.sleep(0)
    assert len(scheduler.queue.waiting) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert scheduler.queue.waiting == []
    hold.set()
    await holding
    assert scheduler.queue.busy == 0
