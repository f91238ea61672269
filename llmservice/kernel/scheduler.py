"""Who runs next: per-backend slots and a bounded waiting queue ordered by priority.

Priorities run from 0 (interactive) to 10 (background); lower runs first, then earlier
arrival. Waiting ages a request: every `aging_s` seconds in the queue counts as one
priority step more urgent, so background work is never starved. When the queue is
full, the least urgent waiter is shed (RESOURCE_EXHAUSTED with a retry hint); a
waiter whose deadline passes gets DEADLINE_EXCEEDED; a cancelled waiter leaves at
once. The queue logic is synchronous and takes its clock as a parameter, so tests
drive it with a fake clock and no sleeps; `Scheduler` puts asyncio around it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from llmservice.kernel.errors import DeadlineExceeded, LLMServiceError, ResourceExhausted

Clock = Callable[[], float]


@dataclass(eq=False)
class Waiter:
    priority: int
    arrival: float
    deadline: float | None
    seq: int
    granted: asyncio.Future[None] | None = None
    error: LLMServiceError | None = None

    def urgency(self, now: float, aging_s: float) -> tuple[float, float, int]:
        """Sort key: smaller runs first."""
        return (aged_priority(self.priority, self.arrival, now, aging_s), self.arrival, self.seq)


def aged_priority(priority: int, arrival: float, now: float, aging_s: float) -> float:
    """`priority`, one step more urgent for every `aging_s` seconds waited since `arrival`."""
    return priority - (math.floor((now - arrival) / aging_s) if aging_s > 0 else 0)


@dataclass
class PriorityStats:
    depth: int = 0
    admitted: int = 0
    shed: int = 0
    expired: int = 0
    wait_total_s: float = 0.0
    wait_max_s: float = 0.0


@dataclass
class Queue:
    """The waiting queue and slot count, with no asyncio in it."""

    slots: int
    max_waiting: int
    aging_s: float
    clock: Clock
    busy: int = 0
    waiting: list[Waiter] = field(default_factory=list)
    stats: dict[int, PriorityStats] = field(default_factory=dict)
    settled: list[Waiter] = field(default_factory=list)  # granted or failed since last drained
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _hold_s: float = 1.0  # moving average of how long a slot is held, for retry hints

    def drain_settled(self) -> list[Waiter]:
        settled, self.settled = self.settled, []
        return settled

    def arrive(self, priority: int, deadline: float | None = None) -> Waiter:
        """A new request: granted at once if a slot is free, else queued (maybe shedding another)."""
        now = self.clock()
        waiter = Waiter(priority, now, deadline, next(self._seq))
        self.expire()
        if self.busy < self.slots and not self.waiting:
            self._grant(waiter, now)
            return waiter
        if len(self.waiting) >= self.max_waiting:
            least = max(self.waiting, key=lambda w: w.urgency(now, self.aging_s))
            if least.urgency(now, self.aging_s) <= waiter.urgency(now, self.aging_s):
                self._fail(waiter, self._shed_error())
                self._stat(priority).shed += 1
                return waiter
            self._remove(least)
            self._fail(least, self._shed_error())
            self._stat(least.priority).shed += 1
        self.waiting.append(waiter)
        self._stat(priority).depth += 1
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """A waiter gives up (cancelled); no slot was taken."""
        if waiter in self.waiting:
            self._remove(waiter)

    def release(self, held_s: float) -> list[Waiter]:
        """A slot is free again; returns the waiters granted as a result."""
        self.busy -= 1
        self._hold_s = 0.8 * self._hold_s + 0.2 * held_s
        return self.grant_next()

    def grant_next(self) -> list[Waiter]:
        self.expire()
        now = self.clock()
        granted = []
        while self.waiting and self.busy < self.slots:
            best = min(self.waiting, key=lambda w: w.urgency(now, self.aging_s))
            self._remove(best)
            self._grant(best, now)
            granted.append(best)
        return granted

    def expire(self) -> list[Waiter]:
        """Remove waiters whose deadline has passed; they get DEADLINE_EXCEEDED."""
        now = self.clock()
        late = [w for w in self.waiting if w.deadline is not None and w.deadline <= now]
        for waiter in late:
            self._remove(waiter)
            self._fail(waiter, DeadlineExceeded("the deadline passed while the request waited for a slot"))
            self._stat(waiter.priority).expired += 1
        return late

    def _fail(self, waiter: Waiter, error: LLMServiceError) -> None:
        waiter.error = error
        self.settled.append(waiter)

    def _grant(self, waiter: Waiter, now: float) -> None:
        self.settled.append(waiter)
        self.busy += 1
        stat = self._stat(waiter.priority)
        stat.admitted += 1
        waited = now - waiter.arrival
        stat.wait_total_s += waited
        stat.wait_max_s = max(stat.wait_max_s, waited)

    def _remove(self, waiter: Waiter) -> None:
        self.waiting.remove(waiter)
        self._stat(waiter.priority).depth -= 1

    def _stat(self, priority: int) -> PriorityStats:
        return self.stats.setdefault(priority, PriorityStats())

    def _shed_error(self) -> ResourceExhausted:
        hint = max(1.0, self._hold_s * (len(self.waiting) + 1) / max(self.slots, 1))
        return ResourceExhausted(
            f"the queue is full ({self.max_waiting} waiting for {self.slots} slots); retry later",
            retry_after_s=round(hint, 1),
        )


class Scheduler:
    """Asyncio admission for one backend: `async with scheduler.slot(priority, deadline): ...`."""

    def __init__(self, slots: int, *, max_waiting: int = 64, aging_s: float = 10.0, clock: Clock) -> None:
        self.queue = Queue(slots, max_waiting, aging_s, clock)
        self._clock = clock

    def slot(self, priority: int, deadline: float | None = None) -> _Slot:
        """Hold one of the backend's slots for the block; waits its turn first."""
        return _Slot(self, priority, deadline)

    async def _acquire(self, priority: int, deadline: float | None) -> None:
        waiter = self.queue.arrive(priority, deadline)
        waiter.granted = asyncio.get_running_loop().create_future()
        self._wake()
        timeout = None if deadline is None else max(deadline - self._clock(), 0.0)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), timeout)
        except TimeoutError:
            self.queue.expire()
            self._wake()
        except BaseException:  # cancelled: leave the queue at once, or hand on a slot just granted
            if waiter in self.queue.waiting:
                self.queue.leave(waiter)
            elif waiter.error is None:
                self._release(0.0)
            raise
        if waiter.error is not None:
            raise waiter.error

    def _release(self, held_s: float) -> None:
        self.queue.release(held_s)
        self._wake()

    def _wake(self) -> None:
        """Resolve the futures of waiters the queue granted or failed."""
        for waiter in self.queue.drain_settled():
            if waiter.granted is not None and not waiter.granted.done():
                waiter.granted.set_result(None)


class _Slot:
    def __init__(self, scheduler: Scheduler, priority: int, deadline: float | None) -> None:
        self._scheduler, self._priority, self._deadline = scheduler, priority, deadline
        self._since = 0.0

    async def __aenter__(self) -> None:
        await self._scheduler._acquire(self._priority, self._deadline)
        self._since = self._scheduler._clock()

    async def __aexit__(self, *exc: object) -> None:
        self._scheduler._release(self._scheduler._clock() - self._since)
