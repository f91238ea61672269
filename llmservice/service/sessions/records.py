"""What a session is, as any worker can rebuild it: the MCP server, the LLM choice, the owner.

Kept in Redis (memory otherwise or while Redis is down), with the secrets in it (the MCP
server's auth_token, the session's own provider credentials) encrypted with
`llmchat.secret_key`, so Redis never holds them in clear; they are never returned either
(`masked`), and they go with the record on disconnect or when its TTL runs out. A record
names a stdio server by its configured name only, never its command line: a worker
rebuilding the session looks the command up in its own configuration, so whoever can
write to Redis cannot make a worker run a program.

A session is its principal's: it is keyed by (principal, user_id) (`session_key`), so two
callers' `ada` are two sessions, and one caller cannot tell whether another has a user_id.
Each principal's open sessions are indexed (a sorted set of user ids, scored by when each
expires) so that connecting one past `llmchat.max_sessions_per_principal` is refused:
`reserve` checks and takes a place in one atomic step, before the (slow) MCP connect.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, cast
from urllib.parse import quote

import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken

from llmservice.kernel.errors import Unavailable
from llmservice.service.sessions.fallback import RETRY_AFTER_S, RedisHealth, RedisOrMemory
from llmservice.service.sessions.mcp_client import ServerSpec
from llmservice.service.sessions.provider_config import MASK, SECRETS, masked

KEY = "llmchat:session:{}"  # of a session_key
INDEX = "llmchat:sessions:{}"  # of an escaped principal name: its sessions' user ids
# How long a place `reserve` took counts before its connect finishes: a connect whose
# worker died mid-way stops counting after this.
RESERVATION_S = 120.0
# "new": the place is taken now; "held": the user id already had one (a reconnect);
# "full": the principal has the most sessions allowed.
Reservation = Literal["new", "held", "full"]
# KEYS[1] the index; ARGV: user id, now, expiry of a new place, the cap, the index's TTL.
_RESERVE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[2])
if redis.call('zscore', KEYS[1], ARGV[1]) then
  return 'held'
end
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[4]) then
  return 'full'
end
redis.call('zadd', KEYS[1], ARGV[3], ARGV[1])
redis.call('expire', KEYS[1], ARGV[5])
return 'new'
"""
# Give back a place unless its session was connected meanwhile (KEYS[2], its record, exists).
_UNRESERVE = """
if redis.call('exists', KEYS[2]) == 0 then
  return redis.call('zrem', KEYS[1], ARGV[1])
end
return 0
"""


def _escaped(principal: str) -> str:
    """The principal's name with no ':' left in it (nor '%', the escape), still readable."""
    return quote(principal, safe="")


def session_key(principal: str, user_id: str) -> str:
    """What a session is stored under: `principal:user_id`, the name escaped, so that no
    two (principal, user_id) pairs share a key."""
    return f"{_escaped(principal)}:{user_id}"


@dataclass(frozen=True)
class LLMChoice:
    """The LLM a session talks to; as a connect asks for it, an empty provider means the
    default one (or the first configured whose default model the caller may use) and an
    empty model its default."""

    provider: str = ""
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    system_prompt: str = ""
    # The session's own provider settings (api_key, base_url, ...: provider_config.KEYS),
    # as the connect gave them; empty: the provider as the server configured it.
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionRecord:
    user_id: str
    principal: str  # who connected it: only they may use it
    server: ServerSpec
    llm: LLMChoice
    streaming: bool = True
    tools: tuple[str, ...] = ()
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # a new one per connect
    created: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return session_key(self.principal, self.user_id)

    def masked(self) -> SessionRecord:
        """The record as its owner may see it: the MCP token, if any, masked."""
        token = MASK if self.server.auth_token else ""
        llm = replace(self.llm, config=masked(self.llm.config))
        return replace(self, server=replace(self.server, auth_token=token), llm=llm)


class SecretBox:
    """Encrypts what must not sit in Redis in clear (Fernet: AES-CBC with an HMAC)."""

    def __init__(self, key: str | None) -> None:
        material = key.encode() if key else secrets.token_bytes(32)
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(material).digest()))

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode() if text else ""

    def open(self, token: str) -> str:
        if not token:
            return ""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise Unavailable(
                "this worker cannot read the session's secrets: "
                "every worker needs the same llmchat.secret_key (LLMCHAT_SECRET_KEY); connect again"
            ) from None


def dump(record: SessionRecord, box: SecretBox) -> str:
    body = asdict(record)
    body["server"]["auth_token"] = box.seal(record.server.auth_token)
    config = body["llm"]["config"]
    for name in SECRETS & set(config):
        config[name] = box.seal(str(config[name]))
    del body["server"]["argv"]  # looked up again by name in the configuration of the worker
    return json.dumps(body)


def load(text: str, box: SecretBox) -> SessionRecord:
    """The record; a stdio server comes back without its command line (see the module doc)."""
    body = json.loads(text)
    server = body.pop("server")
    spec = ServerSpec(server["url"], server["transport"], box.open(server["auth_token"]))
    return SessionRecord(
        **{
            **body,
            "server": spec,
            "llm": LLMChoice(**{**body["llm"], "config": _opened(body["llm"].get("config", {}), box)}),
            "tools": tuple(body["tools"]),
        }
    )


def _opened(config: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    return {k: box.open(v) if k in SECRETS else v for k, v in config.items()}


class RecordStore(Protocol):
    async def get(self, key: str) -> SessionRecord | None: ...
    async def put(self, record: SessionRecord) -> None: ...
    async def delete(self, principal: str, user_id: str) -> None: ...
    async def reserve(self, principal: str, user_id: str, cap: int) -> Reservation:
        """Take a place among the principal's sessions for user_id, unless it has one or
        the principal has `cap` already."""
        ...

    async def unreserve(self, principal: str, user_id: str) -> None:
        """Give back a place `reserve` took, unless the session was connected since."""
        ...


class MemoryRecords:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl_s, clock
        self._records: dict[str, tuple[SessionRecord, float]] = {}
        self._index: dict[str, dict[str, float]] = {}  # principal -> user id -> expiry

    async def get(self, key: str) -> SessionRecord | None:
        held = self._records.get(key)
        if held is None or held[1] <= self._clock():
            self._records.pop(key, None)
            return None
        return held[0]

    async def put(self, record: SessionRecord) -> None:
        expires = self._clock() + self._ttl
        self._records[record.key] = (record, expires)
        self._index.setdefault(record.principal, {})[record.user_id] = expires

    async def delete(self, principal: str, user_id: str) -> None:
        self._records.pop(session_key(principal, user_id), None)
        self._index.get(principal, {}).pop(user_id, None)

    async def reserve(self, principal: str, user_id: str, cap: int) -> Reservation:
        now = self._clock()
        places = self._index.setdefault(principal, {})
        for gone in [u for u, expires in places.items() if expires <= now]:
            del places[gone]
        if user_id in places:
            return "held"
        if len(places) >= cap:
            return "full"
        places[user_id] = now + min(RESERVATION_S, self._ttl)
        return "new"

    async def unreserve(self, principal: str, user_id: str) -> None:
        if await self.get(session_key(principal, user_id)) is None:
            self._index.get(principal, {}).pop(user_id, None)

    def take_all(self) -> list[SessionRecord]:
        out = [record for record, _ in self._records.values()]
        self._records.clear()
        self._index.clear()
        return out


class RedisRecords:
    def __init__(self, client: aioredis.Redis, box: SecretBox, ttl_s: int) -> None:
        self._redis, self._box, self._ttl = client, box, ttl_s

    async def get(self, key: str) -> SessionRecord | None:
        text = await self._redis.get(KEY.format(key))
        return load(str(text), self._box) if text else None

    async def put(self, record: SessionRecord) -> None:
        index = INDEX.format(_escaped(record.principal))
        async with self._redis.pipeline(transaction=True) as tx:
            tx.set(KEY.format(record.key), dump(record, self._box), ex=self._ttl)
            # Scored by wall-clock expiry, which every worker reads alike.
            tx.zadd(index, {record.user_id: time.time() + self._ttl})
            tx.expire(index, self._ttl)
            await tx.execute()

    async def delete(self, principal: str, user_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as tx:
            tx.delete(KEY.format(session_key(principal, user_id)))
            tx.zrem(INDEX.format(_escaped(principal)), user_id)
            await tx.execute()

    async def reserve(self, principal: str, user_id: str, cap: int) -> Reservation:
        now = time.time()
        hold = now + min(RESERVATION_S, self._ttl)
        index = INDEX.format(_escaped(principal))
        answer = await self._redis.eval(
            _RESERVE, 1, index, user_id, str(now), str(hold), str(cap), str(self._ttl)
        )
        return cast(Reservation, str(answer))

    async def unreserve(self, principal: str, user_id: str) -> None:
        index, record = INDEX.format(_escaped(principal)), KEY.format(session_key(principal, user_id))
        await self._redis.eval(_UNRESERVE, 2, index, record, user_id)


class SessionRecords:
    """Session records in Redis when configured, in memory otherwise or while Redis is down."""

    def __init__(
        self,
        redis_client: aioredis.Redis | None,
        box: SecretBox,
        ttl_s: int,
        health: RedisHealth | None = None,
    ) -> None:
        self.memory = MemoryRecords(ttl_s)
        self.redis = RedisRecords(redis_client, box, ttl_s) if redis_client is not None else None
        self._stores: RedisOrMemory[RecordStore] = RedisOrMemory(
            self.redis, self.memory, self._hand_back, health
        )
        # The records this worker has read or written: while Redis is down, a session it
        # already serves goes on from here instead of looking disconnected.
        self._seen: dict[str, SessionRecord] = {}

    async def get(self, key: str) -> SessionRecord | None:
        """The record of a session_key, or None if there is none; Unavailable if only Redis could say."""
        record = await self._stores.run(lambda s: s.get(key))
        if record is None and self.redis is not None and not self._stores.redis_up:
            record = self._seen.get(key)
            if record is None:
                user_id = key.split(":", 1)[-1]  # the principal is the caller's own: no need to say it
                raise Unavailable(
                    f"session store (Redis) unreachable: cannot tell whether {user_id!r} is connected",
                    retry_after_s=RETRY_AFTER_S,
                )
            await self.memory.put(record)  # handed back to Redis when it returns
        if record is not None:
            self._seen[key] = record
        else:
            self._seen.pop(key, None)
        return record

    async def put(self, record: SessionRecord) -> None:
        self._seen[record.key] = record
        await self._stores.run(lambda s: s.put(record))

    async def reserve(self, principal: str, user_id: str, cap: int) -> Reservation:
        return await self._stores.run(lambda s: s.reserve(principal, user_id, cap))

    async def unreserve(self, principal: str, user_id: str) -> None:
        await self._stores.run(lambda s: s.unreserve(principal, user_id))

    async def touch(self, record: SessionRecord) -> None:
        """Keep a session in use from expiring."""
        await self.put(replace(record))

    async def delete(self, principal: str, user_id: str) -> None:
        self._seen.pop(session_key(principal, user_id), None)
        await self._stores.run(lambda s: s.delete(principal, user_id))
        await self.memory.delete(principal, user_id)

    async def _hand_back(self, memory: RecordStore, redis_store: RecordStore) -> None:
        assert isinstance(memory, MemoryRecords)
        pending = memory.take_all()
        try:
            while pending:
                await redis_store.put(pending[0])
                pending.pop(0)
        finally:
            for record in pending:
                await memory.put(record)
