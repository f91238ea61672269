"""Where limit state lives: the interface, and the in-memory store (one process, or Redis down).

Every operation is atomic with respect to others on the same store, so concurrent
requests cannot both take the last of a bucket or a budget. Times are passed in (wall
clock), so the stores hold no clock of their own. The Redis twin is in `redis_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from llmservice.service.limits.rate_limit import Bucket, Level, give_back, take


class LimitStore(Protocol):
    async def take(self, buckets: Sequence[Bucket], now: float) -> float:
        """Take each bucket's amount if all hold enough: 0.0; else the seconds until they would."""
        ...

    async def give_back(self, key: str, capacity: float, amount: float, now: float) -> None:
        """Return `amount` to a bucket (negative: take more)."""
        ...

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> float | None:
        """Add `amount` to a spend counter if it stays within `limit`: None; else the spend so far."""
        ...

    async def add(self, key: str, amount: float, ttl_s: int) -> None:
        """Add `amount` (maybe negative) to a spend counter; `ttl_s` 0 keeps it forever."""
        ...

    async def spent(self, key: str) -> float: ...


class MemoryStore:
    """Buckets and counters in this process; expiry is not needed for correctness here."""

    def __init__(self) -> None:
        self._levels: dict[str, Level] = {}
        self._spent: dict[str, float] = {}

    async def take(self, buckets: Sequence[Bucket], now: float) -> float:
        wait, levels = take([self._levels.get(b.key) for b in buckets], list(buckets), now)
        for bucket, level in zip(buckets, levels, strict=False):
            self._levels[bucket.key] = level
        return wait

    async def give_back(self, key: str, capacity: float, amount: float, now: float) -> None:
        self._levels[key] = give_back(self._levels.get(key), capacity, amount, now)

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> float | None:
        spent = self._spent.get(key, 0.0)
        if spent + amount > limit:
            return spent
        self._spent[key] = spent + amount
        return None

    async def add(self, key: str, amount: float, ttl_s: int) -> None:
        self._spent[key] = self._spent.get(key, 0.0) + amount

    async def spent(self, key: str) -> float:
        return self._spent.get(key, 0.0)
