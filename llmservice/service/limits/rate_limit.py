"""Requests and tokens per minute: token buckets, one per principal and kind.

A bucket holds up to `capacity` (the per-minute limit) and refills at capacity per
minute, so a principal may burst up to its limit and then runs at its rate. A request
takes 1 from its requests bucket and its estimated tokens from its tokens bucket (both
or neither); once its real usage is known, the difference goes back (or is taken: a
bucket may go into debt, which later requests wait out). The arithmetic here is pure,
with time passed in; the stores (memory, or the Lua twin of it in Redis) keep the state.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 60.0  # the limits are per minute


@dataclass(frozen=True, slots=True)
class Bucket:
    """Which bucket, how large, and how much a request takes from it."""

    key: str
    capacity: float
    amount: float


@dataclass(frozen=True, slots=True)
class Level:
    """A bucket's content as of `at` (a wall-clock time)."""

    level: float
    at: float


def refilled(state: Level | None, capacity: float, now: float) -> float:
    """What the bucket holds at `now`; a bucket never seen is full."""
    if state is None:
        return capacity
    return min(capacity, state.level + max(0.0, now - state.at) * capacity / WINDOW_S)


def wait_s(level: float, amount: float, capacity: float) -> float:
    """Seconds until a bucket at `level` holds `amount`; 0 when it already does."""
    return 0.0 if level >= amount else (amount - level) * WINDOW_S / capacity


def full_in_s(level: float, capacity: float) -> float:
    """Seconds until a bucket at `level` is full again (when its state may be forgotten)."""
    return max(0.0, capacity - level) * WINDOW_S / capacity


def take(states: list[Level | None], buckets: list[Bucket], now: float) -> tuple[float, list[Level]]:
    """Take each bucket's amount if all hold enough: (0, new states); else (seconds to wait, [])."""
    levels = [refilled(s, b.capacity, now) for s, b in zip(states, buckets, strict=True)]
    wait = max((wait_s(lv, b.amount, b.capacity) for lv, b in zip(levels, buckets, strict=True)), default=0.0)
    if wait > 0:
        return wait, []
    return 0.0, [Level(lv - b.amount, now) for lv, b in zip(levels, buckets, strict=True)]


def give_back(state: Level | None, capacity: float, amount: float, now: float) -> Level:
    """Return `amount` to a bucket (negative: take more), never above its capacity."""
    return Level(min(capacity, refilled(state, capacity, now) + amount), now)
