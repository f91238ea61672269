"""The limit store in Redis, shared by every replica; memory while Redis does not answer.

Each operation is one Lua script, so it is atomic across replicas. The scripts mirror
`rate_limit` exactly (a bucket is a hash {level, at}; a missing one is full) and are
handed the caller's wall clock, so replicas need roughly synchronised clocks (NTP), and
tests can drive them with a fake one. Numbers travel as strings: Redis would truncate a
Lua number in a reply to an integer.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from llmservice.service.limits.rate_limit import WINDOW_S, Bucket
from llmservice.service.limits.store import LimitStore, MemoryStore
from llmservice.service.sessions.fallback import RedisHealth, RedisOrMemory

PREFIX = "llm:limits:"

_REFILLED = """
local function refilled(key, cap, now, window)
  local state = redis.call('HMGET', key, 'level', 'at')
  if not state[1] then return cap end
  return math.min(cap, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * cap / window)
end
local function store(key, level, cap, now, window)
  redis.call('HSET', key, 'level', tostring(level), 'at', tostring(now))
  redis.call('EXPIRE', key, math.ceil(math.max(0, cap - level) * window / cap) + 1)
end
"""
# KEYS: the buckets; ARGV: now, window, then capacity and amount of each bucket.
_TAKE = (
    _REFILLED
    + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local cap, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  levels[i] = refilled(key, cap, now, window)
  if levels[i] < amount then wait = math.max(wait, (amount - levels[i]) * window / cap) end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local cap, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  store(key, levels[i] - amount, cap, now, window)
end
return '0'
"""
)
# KEYS[1]: the bucket; ARGV: now, window, capacity, amount to give back.
_GIVE_BACK = (
    _REFILLED
    + """
local now, window, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
store(KEYS[1], math.min(cap, refilled(KEYS[1], cap, now, window) + tonumber(ARGV[4])), cap, now, window)
return 1
"""
)
# KEYS[1]: the counter; ARGV: amount, limit, ttl. nil if reserved, else the spend so far.
_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return tostring(spent) end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return false
"""
_ADD = """
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class RedisStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)
        self._reserve = client.register_script(_RESERVE)
        self._add = client.register_script(_ADD)

    async def take(self, buckets: Sequence[Bucket], now: float) -> float:
        args: list[str] = [repr(now), repr(WINDOW_S)]
        for b in buckets:
            args += [repr(float(b.capacity)), repr(float(b.amount))]
        wait = await self._take(keys=[PREFIX + b.key for b in buckets], args=args)
        return float(wait)

    async def give_back(self, key: str, capacity: float, amount: float, now: float) -> None:
        args = [repr(now), repr(WINDOW_S), repr(float(capacity)), repr(float(amount))]
        await self._give_back(keys=[PREFIX + key], args=args)

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> float | None:
        spent = await self._reserve(keys=[PREFIX + key], args=[repr(amount), repr(limit), str(ttl_s)])
        return None if spent is None else float(spent)

    async def add(self, key: str, amount: float, ttl_s: int) -> None:
        await self._add(keys=[PREFIX + key], args=[repr(amount), str(ttl_s)])

    async def spent(self, key: str) -> float:
        return float(await self._redis.get(PREFIX + key) or 0.0)


class SharedStore:
    """Redis while it answers, this process's memory while it does not (logged once per outage)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        health = RedisHealth(what="rate limits and budgets")
        self._stores: RedisOrMemory[LimitStore] = RedisOrMemory(
            RedisStore(client), MemoryStore(), health=health
        )

    async def take(self, buckets: Sequence[Bucket], now: float) -> float:
        return await self._stores.run(lambda s: s.take(buckets, now))

    async def give_back(self, key: str, capacity: float, amount: float, now: float) -> None:
        await self._stores.run(lambda s: s.give_back(key, capacity, amount, now))

    async def reserve(self, key: str, amount: float, limit: float, ttl_s: int) -> float | None:
        return await self._stores.run(lambda s: s.reserve(key, amount, limit, ttl_s))

    async def add(self, key: str, amount: float, ttl_s: int) -> None:
        await self._stores.run(lambda s: s.add(key, amount, ttl_s))

    async def spent(self, key: str) -> float:
        return await self._stores.run(lambda s: s.spent(key))
