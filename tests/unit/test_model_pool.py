"""The model pool's bookkeeping with fake models and a fake clock: load on use, unload on
request or when idle, least recently used first under a budget, close after the last use."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from llmservice.kernel.errors import ResourceExhausted
from llmservice.providers.llamacpp.pool import ModelPool

MB = 1 << 20


@dataclass(eq=False)
class FakeModel:
    id: str
    closed: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closed.set()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    pool: ModelPool[FakeModel]
    clock: Clock
    opened: list[FakeModel]
    sizes: dict[str, int]


def world(*, budget: int = 0, idle_s: float = 0.0) -> World:
    clock, opened = Clock(), []
    sizes = {"a": 100 * MB, "b": 100 * MB, "c": 150 * MB, "huge": 999 * MB}

    def opener(model_id: str) -> FakeModel:
        opened.append(FakeModel(model_id))
        return opened[-1]

    pool = ModelPool(opener, sizes.__getitem__, budget=budget, idle_s=idle_s, clock=clock)
    return World(pool, clock, opened, sizes)


async def test_a_model_loads_on_first_use_and_once() -> None:
    w = world()
    async with w.pool.use("a") as first, w.pool.use("a") as second:
        assert first is second
        assert w.pool.in_use("a") == 2
    assert [m.id for m in w.opened] == ["a"]
    assert w.pool.loaded() == ["a"]
    assert await w.pool.load("a") is False  # loaded already


async def test_unloading_a_model_in_use_closes_it_after_its_last_use() -> None:
    w = world()
    async with w.pool.use("a") as old:
        assert w.pool.unload("a")
        assert w.pool.loaded() == []
        async with w.pool.use("a") as new:  # the next use loads it afresh
            assert new is not old
        w.pool.wait_closed()
        assert not old.closed.is_set()
        assert old in w.pool.values()
    w.pool.wait_closed()
    assert old.closed.is_set()
    assert w.pool.unload("nothing") is False


async def test_idle_models_unload_after_idle_s_and_busy_ones_do_not() -> None:
    w = world(idle_s=60)
    await w.pool.load("a")
    async with w.pool.use("b"):
        w.clock.now = 59
        assert w.pool.unload_idle() == []
        w.clock.now = 61
        assert w.pool.unload_idle() == ["a"]
    w.clock.now = 100  # b was last used at 61, when its use ended
    assert w.pool.unload_idle() == []
    w.clock.now = 121
    assert w.pool.unload_idle() == ["b"]
    w.pool.wait_closed()
    assert all(m.closed.is_set() for m in w.opened)


async def test_no_idle_unload_when_idle_s_is_zero() -> None:
    w = world()
    await w.pool.load("a")
    w.clock.now = 1e9
    assert w.pool.unload_idle() == []


async def test_the_budget_unloads_the_least_recently_used_first() -> None:
    w = world(budget=250 * MB)
    await w.pool.load("a")
    w.clock.now = 1
    await w.pool.load("b")
    w.clock.now = 2
    await w.pool.load("a")  # used again: b is now the least recent
    w.clock.now = 3
    await w.pool.load("c")  # 100 + 100 + 150 > 250: one must go
    assert w.pool.loaded() == ["a", "c"]
    w.pool.wait_closed()
    assert [m.id for m in w.opened if m.closed.is_set()] == ["b"]


async def test_under_the_budget_an_idle_model_goes_before_a_busy_one() -> None:
    w = world(budget=250 * MB)
    async with w.pool.use("a"):  # the least recent, but busy
        w.clock.now = 1
        await w.pool.load("b")
        w.clock.now = 2
        await w.pool.load("c")
        assert w.pool.loaded() == ["a", "c"]


async def test_a_model_larger_than_the_whole_budget_is_refused() -> None:
    w = world(budget=250 * MB)
    with pytest.raises(ResourceExhausted, match=r"huge.*memory_budget_mb"):
        await w.pool.load("huge")
    assert w.opened == []


async def test_closing_the_pool_closes_everything() -> None:
    w = world()
    await w.pool.load("a")
    async with w.pool.use("b"):
        w.pool.unload("b")
        await w.pool.aclose()
    assert all(m.closed.is_set() for m in w.opened)
    assert w.pool.values() == []
