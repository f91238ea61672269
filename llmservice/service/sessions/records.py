"""What a session is, as any worker can rebuild it: the MCP server, the LLM choice, the owner.

Kept in Redis (memory otherwise or while Redis is down), with the secrets in it (the MCP
server's auth_token, the session's own provider credentials) encrypted with
`llmchat.secret_key`, so Redis never holds them in clear; they are never returned either
(`masked`), and they go with the record on disconnect or when its TTL runs out. A record
names a stdio server by its configured name only, never its command line: a worker
rebuilding the session looks the command up in its own configuration, so whoever can
write to Redis cannot make a worker run a program. A user_id is bound to the principal
that connected it (`bind`, atomic), before the connection is opened, so two callers
cannot race for a new user_id.
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
from typing import Any, Protocol

import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken

from llmservice.kernel.errors import Unavailable
from llmservice.service.sessions.fallback import RELEASE, RETRY_AFTER_S, RedisHealth, RedisOrMemory
from llmservice.service.sessions.mcp_client import ServerSpec
from llmservice.service.sessions.provider_config import MASK, SECRETS, masked

KEY = "llmchat:session:{}"
BINDING = "llmchat:user:{}"


@dataclass(frozen=True)
class LLMChoice:
    """The LLM a session talks to; as a connect asks for it, an empty provider means the
    first one configured and an empty model its default."""

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
    async def get(self, user_id: str) -> SessionRecord | None: ...
    async def put(self, record: SessionRecord) -> None: ...
    async def delete(self, user_id: str) -> None: ...
    async def bind(self, user_id: str, principal: str) -> str | None:
        """Bind user_id to principal unless it is bound; return whom it was bound to before."""
        ...

    async def unbind(self, user_id: str, principal: str) -> None: ...


class MemoryRecords:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl_s, clock
        self._records: dict[str, tuple[SessionRecord, float]] = {}
        self._bindings: dict[str, tuple[str, float]] = {}

    async def get(self, user_id: str) -> SessionRecord | None:
        held = self._records.get(user_id)
        if held is None or held[1] <= self._clock():
            self._records.pop(user_id, None)
            return None
        return held[0]

    async def put(self, record: SessionRecord) -> None:
        expires = self._clock() + self._ttl
        self._records[record.user_id] = (record, expires)
        self._bindings[record.user_id] = (record.principal, expires)

    async def delete(self, user_id: str) -> None:
        self._records.pop(user_id, None)
        self._bindings.pop(user_id, None)

    async def bind(self, user_id: str, principal: str) -> str | None:
        held = self._bindings.get(user_id)
        if held is not None and held[1] > self._clock():
            return held[0]
        self._bindings[user_id] = (principal, self._clock() + self._ttl)
        return None

    async def unbind(self, user_id: str, principal: str) -> None:
        held = self._bindings.get(user_id)
        if held is not None and held[0] == principal:
            del self._bindings[user_id]

    def take_all(self) -> list[SessionRecord]:
        out = [record for record, _ in self._records.values()]
        self._records.clear()
        self._bindings.clear()
        return out


class RedisRecords:
    def __init__(self, client: aioredis.Redis, box: SecretBox, ttl_s: int) -> None:
        self._redis, self._box, self._ttl = client, box, ttl_s

    async def get(self, user_id: str) -> SessionRecord | None:
        text = await self._redis.get(KEY.format(user_id))
        return load(str(text), self._box) if text else None

    async def put(self, record: SessionRecord) -> None:
        async with self._redis.pipeline(transaction=True) as tx:
            tx.set(KEY.format(record.user_id), dump(record, self._box), ex=self._ttl)
            tx.set(BINDING.format(record.user_id), record.principal, ex=self._ttl)
            await tx.execute()

    async def delete(self, user_id: str) -> None:
        await self._redis.delete(KEY.format(user_id), BINDING.format(user_id))

    async def bind(self, user_id: str, principal: str) -> str | None:
        # SET NX GET: set only if absent, and say what was there, in one step.
        before = await self._redis.set(BINDING.format(user_id), principal, nx=True, ex=self._ttl, get=True)
        return None if before is None else str(before)

    async def unbind(self, user_id: str, principal: str) -> None:
        await self._redis.eval(RELEASE, 1, BINDING.format(user_id), principal)


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

    async def get(self, user_id: str) -> SessionRecord | None:
        """The record, or None if there is none; Unavailable if only Redis could say."""
        record = await self._stores.run(lambda s: s.get(user_id))
        if record is None and self.redis is not None and not self._stores.redis_up:
            record = self._seen.get(user_id)
            if record is None:
                raise Unavailable(
                    f"session store (Redis) unreachable: cannot tell whether {user_id!r} is connected",
                    retry_after_s=RETRY_AFTER_S,
                )
            await self.memory.put(record)  # handed back to Redis when it returns
        if record is not None:
            self._seen[user_id] = record
        else:
            self._seen.pop(user_id, None)
        return record

    async def put(self, record: SessionRecord) -> None:
        self._seen[record.user_id] = record
        await self._stores.run(lambda s: s.put(record))

    async def bind(self, user_id: str, principal: str) -> str | None:
        return await self._stores.run(lambda s: s.bind(user_id, principal))

    async def unbind(self, user_id: str, principal: str) -> None:
        await self._stores.run(lambda s: s.unbind(user_id, principal))

    async def touch(self, record: SessionRecord) -> None:
        """Keep a session in use from expiring."""
        await self.put(replace(record))

    async def delete(self, user_id: str) -> None:
        self._seen.pop(user_id, None)
        await self._stores.run(lambda s: s.delete(user_id))
        await self.memory.delete(user_id)

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
