"""Loaded models shared by reference count: load on first use, unload on request, when idle,
or least recently used first when a memory budget would be exceeded.

Every use of a model holds a reference for as long as it runs (a whole stream). Unloading
retires the model: it leaves the pool at once, so the next request loads it afresh, but
it is closed only when its last reference goes. That is what lets the default model be
swapped while streams run: they finish on the old engine, new requests go to the new one.

The pool is generic over what it holds (anything with a blocking `close`), so its
bookkeeping is tested with fakes and a fake clock; loading and closing run on threads,
never on the event loop, and the pool works from any event loop or thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from llmservice.kernel.errors import ResourceExhausted

Clock = Callable[[], float]


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


@dataclass(eq=False)
class _Resident(Generic[T]):
    id: str
    value: T
    cost: int
    last_used: float
    refs: int = 0
    retired: bool = False


class ModelPool(Generic[T]):
    """Models by id, each opened by `opener(id)` and weighing `cost(id)` bytes against the budget.

    `budget` 0 means no budget; `idle_s` 0 means never unload for idleness. `on_closed`
    sees each value after it was closed (to keep its counters, say).
    """

    def __init__(
        self,
        opener: Callable[[str], T],
        cost: Callable[[str], int],
        *,
        budget: int = 0,
        idle_s: float = 0.0,
        clock: Clock,
        on_closed: Callable[[T], None] | None = None,
    ) -> None:
        self._open = opener
        self._cost = cost
        self.budget = budget
        self.idle_s = idle_s
        self._clock = clock
        self._on_closed = on_closed
        self._lock = threading.Lock()  # the maps and counts below
        self._loading = threading.Lock()  # one load (and its evictions) at a time
        self._loaded: dict[str, _Resident[T]] = {}
        self._retired: list[_Resident[T]] = []  # unloaded, still in use
        self._closers: list[threading.Thread] = []

    # What is loaded.

    def loaded(self) -> list[str]:
        """Ids loaded now, least recently used first."""
        with self._lock:
            return [r.id for r in sorted(self._loaded.values(), key=lambda r: r.last_used)]

    def values(self) -> list[T]:
        """Every value not yet closed: loaded ones, and retired ones still in use."""
        with self._lock:
            return [r.value for r in (*self._loaded.values(), *self._retired)]

    def in_use(self, model_id: str) -> int:
        with self._lock:
            found = self._loaded.get(model_id)
            return found.refs if found else 0

    # Using a model.

    @contextlib.asynccontextmanager
    async def use(self, model_id: str) -> AsyncIterator[T]:
        """The model, loaded first if it is not; it stays loaded until the block ends."""
        resident = self._hold(model_id)
        if resident is None:
            resident = await asyncio.to_thread(self._load_held, model_id)
        try:
            yield resident.value
        finally:
            self._release(resident)

    @contextlib.contextmanager
    def peek(self, model_id: str) -> Iterator[T | None]:
        """The model if it is loaded (held for the block), else None; never loads."""
        resident = self._hold(model_id)
        try:
            yield resident.value if resident else None
        finally:
            if resident is not None:
                self._release(resident)

    async def load(self, model_id: str) -> bool:
        """Load a model now (it counts as used now); False when it was loaded already."""
        resident = self._hold(model_id)
        fresh = resident is None
        if resident is None:
            resident = await asyncio.to_thread(self._load_held, model_id)
        self._release(resident)
        return fresh

    def unload(self, model_id: str) -> bool:
        """Retire a model: it closes once its last use ends. False when it was not loaded."""
        with self._lock:
            resident = self._loaded.pop(model_id, None)
            if resident is None:
                return False
            self._retire(resident)
        return True

    def unload_idle(self) -> list[str]:
        """Unload every model unused for idle_s or more; their ids."""
        if self.idle_s <= 0:
            return []
        now = self._clock()
        with self._lock:
            idle = [r for r in self._loaded.values() if not r.refs and now - r.last_used >= self.idle_s]
            for resident in idle:
                del self._loaded[resident.id]
                self._retire(resident)
        return [r.id for r in idle]

    async def aclose(self) -> None:
        """Unload everything and wait until all is closed (uses still running are cut short)."""
        with self._lock:
            everything = [*self._loaded.values(), *self._retired]
            self._loaded.clear()
            self._retired.clear()
            for resident in everything:
                resident.retired = True
                resident.refs = -1  # closed here; a release still to come must not close it again
        for resident in everything:
            await asyncio.to_thread(self._close, resident)
        for closer in list(self._closers):
            await asyncio.to_thread(closer.join)

    # Inside.

    def _hold(self, model_id: str) -> _Resident[T] | None:
        with self._lock:
            resident = self._loaded.get(model_id)
            if resident is not None:
                resident.refs += 1
                resident.last_used = self._clock()
            return resident

    def _load_held(self, model_id: str) -> _Resident[T]:
        """On a thread: load `model_id` (unless another load just did) and hold it."""
        with self._loading:
            resident = self._hold(model_id)
            if resident is not None:
                return resident
            cost = self._cost(model_id)
            self._make_room(model_id, cost)
            value = self._open(model_id)
            resident = _Resident(model_id, value, cost, self._clock(), refs=1)
            with self._lock:
                self._loaded[model_id] = resident
            return resident

    def _make_room(self, model_id: str, cost: int) -> None:
        """Unload least recently used models, idle ones first, until `cost` more fits the budget."""
        if not self.budget:
            return
        if cost > self.budget:
            raise ResourceExhausted(
                f"model {model_id!r} needs {cost >> 20} MB, more than the whole memory budget "
                f"of {self.budget >> 20} MB (llamacpp.memory_budget_mb)"
            )
        with self._lock:
            order = sorted(self._loaded.values(), key=lambda r: (r.refs > 0, r.last_used))
            used = sum(r.cost for r in self._loaded.values())
            for victim in order:
                if used + cost <= self.budget:
                    break
                # A victim still in use keeps serving its streams and closes after the last.
                del self._loaded[victim.id]
                self._retire(victim)
                used -= victim.cost

    def _retire(self, resident: _Resident[T]) -> None:
        """With the lock held: out of the pool; closed now if unused, else at its last release."""
        resident.retired = True
        if resident.refs:
            self._retired.append(resident)
        else:
            self._close_later(resident)

    def _release(self, resident: _Resident[T]) -> None:
        with self._lock:
            if resident.refs < 0:  # the pool was closed under it
                return
            resident.refs -= 1
            resident.last_used = self._clock()
            if resident.retired and not resident.refs:
                self._retired.remove(resident)
                self._close_later(resident)

    def _close_later(self, resident: _Resident[T]) -> None:
        """Close on a thread of its own: closing joins the engine's thread, which may take a step."""
        closer = threading.Thread(target=self._close, args=(resident,), name=f"close-{resident.id}")
        self._closers = [c for c in self._closers if c.is_alive()] + [closer]
        closer.start()

    def _close(self, resident: _Resident[T]) -> None:
        resident.value.close()
        if self._on_closed is not None:
            self._on_closed(resident.value)

    def wait_closed(self, timeout_s: float = 30.0) -> None:
        """Wait for closes already started (for tests and shutdown)."""
        for closer in list(self._closers):
            closer.join(timeout_s)
