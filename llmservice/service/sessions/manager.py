"""Chat sessions: connect a user to an MCP server and an LLM, run turns, disconnect.

The state any worker needs (the session record, the history) lives in Redis, or in
memory; the live MCP connection lives in the worker that owns the session (see
ownership), rebuilt from the record when a turn lands on a worker that has none (or an
older one). A rebuild trusts nothing in the record it would not accept at connect: the
stdio command comes from this worker's configuration, URLs pass the URL policy again.
A session may bring its own provider settings (`llm.config`: a key, an endpoint; see
provider_config): the worker then runs a provider of the session's own beside the MCP
connection, built and closed with it. Each turn runs the agent loop under the turn
timeout and adds what it said and did to the history. A janitor closes connections idle
for session_ttl (their ownership has lapsed) or whose session ended or moved.

A session belongs to the principal that connected it: everything about it is keyed by
(principal, user_id) (records.session_key), so another caller's user_id looks like one
nobody has, and each principal may hold at most llmchat.max_sessions_per_principal.

What a turn leaves in the history (see `_turn`): a turn that answered, all of it; one the
model refused (InvalidRequest: the conversation with it cannot be sent), nothing, not even
the user's message, so the next turn is not refused again; one that failed or was cut
(its caller gone, its timeout, the service shutting down: `cut_turns`) before any tool
ran, nothing; after tools ran, the user's message and its tool steps, every call answered
(agent.settled), since what the tools did may have taken effect; never a partial answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from llmservice.kernel.errors import (
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.settings import ProviderSettings
from llmservice.kernel.types import ChatRequest, Message, Sampling
from llmservice.providers import entries
from llmservice.service.auth import Principal
from llmservice.service.core import LLMCore
from llmservice.service.sessions import fallback
from llmservice.service.sessions.agent import ToolInvocation, TurnEvent, run_turn, settled
from llmservice.service.sessions.config import TRANSPORTS, ServerConfig
from llmservice.service.sessions.history import ChatHistoryManager
from llmservice.service.sessions.mcp_client import McpConnection, ServerSpec
from llmservice.service.sessions.ownership import Ownership
from llmservice.service.sessions.provider_config import session_settings
from llmservice.service.sessions.records import (
    LLMChoice,
    SecretBox,
    SessionRecord,
    SessionRecords,
    session_key,
)
from llmservice.service.sessions.safety import UrlPolicy
from llmservice.service.settings import CacheSettings, LLMChatSettings

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing

log = logging.getLogger(__name__)

NO_SESSION = "No active session found. Please connect to a server first."
NO_CONFIG = "No config found for this user."
SHUTTING_DOWN = "the service is shutting down; retry on another replica"


@dataclass(frozen=True)
class Connected:
    user_id: str
    provider: str
    tools: tuple[str, ...]


@dataclass
class _Live:
    session_id: str
    connection: McpConnection
    llm: Provider | None = None  # the session's own provider, when it brought settings
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  # turns running on it

    async def aclose(self) -> None:
        await _close(self.connection, self.llm)


class SessionManager:
    def __init__(
        self,
        core: LLMCore,
        settings: LLMChatSettings,
        cache: CacheSettings,
        worker_id: str | None = None,
        tracing: Tracing | None = None,
        sections: Callable[[str], ProviderSettings] | None = None,
    ) -> None:
        """`tracing`: each model call of a turn becomes an `llm.request` span inside the turn's.
        `sections`: the server's settings of a provider kind (its environment, llm.toml),
        under which a session's own provider settings are laid; by default their defaults."""
        self._core, self._settings, self._tracing = core, settings, tracing
        self._sections = sections or (lambda kind: entries()[kind].settings())
        self._redis = (
            fallback.connect(cache.redis_url or "redis://127.0.0.1:6379/0") if cache.uses_redis else None
        )
        box = SecretBox(settings.secret_key.get_secret_value() if settings.secret_key else None)
        if self._redis is not None and settings.secret_key is None:
            log.warning("llmchat.secret_key is not set: sessions cannot move between workers")
        health = fallback.RedisHealth()  # one per worker: an outage is logged once
        self.history = ChatHistoryManager(
            self._redis, settings.chat_history_max_messages, settings.chat_history_ttl, health
        )
        self.records = SessionRecords(self._redis, box, settings.chat_history_ttl, health)
        worker = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ownership = Ownership(self._redis, settings, worker)
        self._urls = UrlPolicy(settings.allowed_hosts)
        self._live: dict[str, _Live] = {}  # by session key
        self.tool_calls = {"ok": 0, "error": 0}  # MCP tool calls by outcome, ever (for metrics)
        self._janitor: asyncio.Task[None] | None = None
        self._deadlines: set[asyncio.Timeout] = set()  # of the turns running: cut_turns ends them
        self._cut = False

    async def __aenter__(self) -> SessionManager:
        self._janitor = asyncio.create_task(self._sweep_forever(), name="llmchat janitor")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def sweep(self) -> None:
        """Close this worker's connections idle for session_ttl (its ownership lapsed with
        them), or whose session ended, was connected again or is owned by another worker.
        A connection a turn is running on is left alone."""
        idle_since = time.monotonic() - self._settings.session_ttl
        for key, live in list(self._live.items()):
            if live.busy:
                continue
            stale = live.last_used <= idle_since or not live.connection.alive
            if not stale:
                with contextlib.suppress(Unavailable):  # Redis down: only idleness counts
                    record = await self.records.get(key)
                    owner = await self.ownership.owner(key)
                    stale = record is None or record.session_id != live.session_id
                    stale = stale or owner not in (None, self.ownership.worker_id)
            if stale and self._live.get(key) is live and not live.busy:
                del self._live[key]
                await live.aclose()
                await self.ownership.release(key)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.session_ttl / 2)
            try:
                await self.sweep()
            except Exception:  # the janitor must outlive any one bad sweep
                log.exception("llmchat: sweeping idle session connections failed")

    async def aclose(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        for key in list(self._live):
            await self._drop(key)
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def active(self) -> int:
        """Sessions whose MCP connection this worker holds open."""
        return len(self._live)

    def cut_turns(self) -> None:
        """End every turn running here now, and any that starts from here on, as their
        timeout would, but as Unavailable (SHUTTING_DOWN): for the end of a drain's grace.
        Each keeps what it did in the history, every tool call answered (see the module doc)."""
        self._cut = True
        now = asyncio.get_running_loop().time()
        for deadline in self._deadlines:
            if not deadline.expired():
                deadline.reschedule(now)

    async def connect(
        self,
        principal: Principal,
        user_id: str,
        server: ServerConfig,
        llm: LLMChoice,
        streaming: bool = True,
    ) -> Connected:
        _check_user_id(user_id)
        key = session_key(principal.name, user_id)
        spec = await self._resolve(server.spec())
        choice = await self._llm_choice(principal, llm)
        # Take the session's place among the principal's before the (slow) MCP connect: of
        # two connects racing for the last place, one gets it, never both. Connecting a
        # user_id again keeps its place.
        cap = self._settings.max_sessions_per_principal
        reservation = await self.records.reserve(principal.name, user_id, cap)
        if reservation == "full":
            raise ResourceExhausted(
                f"this caller has reached the cap of {cap} open chat sessions "
                "(llmchat.max_sessions_per_principal); disconnect one first"
            )
        own_llm: Provider | None = None
        try:
            own_llm = await self._own_llm(choice)
            model = choice.model or (own_llm.default_model if own_llm else "")
            if own_llm is not None and not principal.may_use(own_llm.name, model):
                raise NotFound(f"model {choice.model or 'default'!r} not found")
            connection = self._new_connection(spec)
            try:
                tools = await connection.open()
            except Unavailable as exc:
                raise Unavailable(
                    f"Failed to connect to MCP server: {exc.message}. "
                    "Please verify the server URL and authentication.",
                    retry_after_s=exc.retry_after_s,
                ) from None
        except BaseException:
            await _close(None, own_llm)
            if reservation == "new":
                await self.records.unreserve(principal.name, user_id)
            raise
        record = SessionRecord(user_id, principal.name, spec, choice, streaming, tuple(t.name for t in tools))
        await self._drop(key)
        self._live[key] = _Live(record.session_id, connection, own_llm)
        await self.records.put(record)
        await self.ownership.take(key)
        return Connected(user_id, choice.provider, record.tools)

    async def disconnect(self, principal: Principal, user_id: str) -> bool:
        """End the session and forget its history; False if there was none."""
        record = await self._own_record(principal, user_id, required=False)
        key = session_key(principal.name, user_id)
        await self._drop(key)
        if record is None:
            return False
        await self.records.delete(principal.name, user_id)
        await self.history.clear(key)
        await self.ownership.release(key)
        return True

    async def status(self, principal: Principal, user_id: str) -> bool:
        return await self._own_record(principal, user_id, required=False) is not None

    async def config(self, principal: Principal, user_id: str) -> SessionRecord:
        record = await self._own_record(principal, user_id, required=True, missing=NO_CONFIG)
        assert record is not None
        return record.masked()

    async def chat(self, principal: Principal, user_id: str, message: str) -> AsyncGenerator[TurnEvent]:
        """Check everything, then return the turn's events (errors come before the first)."""
        if not message.strip():
            raise InvalidRequest("message", "is empty", message="Message cannot be empty")
        record = await self._own_record(principal, user_id, required=True)
        assert record is not None
        live, kept = await self._connection(record)
        return self._turn(principal, record, live, kept, message)

    async def _turn(
        self, principal: Principal, record: SessionRecord, live: _Live, kept: bool, message: str
    ) -> AsyncGenerator[TurnEvent]:
        connection = live.connection
        added: list[Message] = []  # what the turn says and does, after the user's message
        refused = False
        # Everything from the first await on is inside the try: a caller that leaves while
        # the history is read still releases the turn's connection.
        try:
            history = await self.history.read(record.key)
            llm = record.llm
            system = (Message("system", llm.system_prompt),) if llm.system_prompt else ()
            request = ChatRequest(
                system + tuple(history) + (Message("user", message),),
                model=llm.model,
                provider=llm.provider,
                sampling=Sampling(
                    temperature=llm.temperature, top_p=llm.top_p, max_tokens=llm.max_tokens, seed=llm.seed
                ),
                tools=connection.tools,
            )
            steps = self._settings.max_steps
            loop = run_turn(
                self._core if live.llm is None else self._core.using(live.llm),
                principal,
                request,
                connection.call,
                max_steps=steps,
                added=added,
                tracing=self._tracing,
            )
            async with asyncio.timeout(self._settings.turn_timeout_s) as deadline:
                self._deadlines.add(deadline)
                try:
                    if self._cut:  # started after the cut: end it at once
                        deadline.reschedule(asyncio.get_running_loop().time())
                    async with contextlib.aclosing(loop) as events:
                        async for event in events:
                            if isinstance(event, ToolInvocation):
                                self.tool_calls["error" if event.is_error else "ok"] += 1
                            yield event
                finally:
                    self._deadlines.discard(deadline)
        except InvalidRequest:
            refused = True  # the conversation with this turn in it was refused: keep none of it
            raise
        except TimeoutError:
            if self._cut:
                raise Unavailable(f"{SHUTTING_DOWN} (the turn was cut short)") from None
            raise DeadlineExceeded(
                f"the turn took longer than {self._settings.turn_timeout_s:g} s (llmchat.turn_timeout_s)"
            ) from None
        finally:
            # Nothing done (the first model call failed, or the caller left before it
            # answered): nothing to keep. Tools ran: their steps stay, every call answered.
            said = [] if refused or not added else [Message("user", message), *settled(added)]
            await self._turn_ended(record, live, kept, said)

    async def _turn_ended(self, record: SessionRecord, live: _Live, kept: bool, said: list[Message]) -> None:
        if kept:
            live.busy -= 1
            live.last_used = time.monotonic()
        else:
            await asyncio.shield(live.aclose())
        with contextlib.suppress(Exception):
            if said:
                await asyncio.shield(self.history.append(record.key, said))
            await self.records.touch(record)
            if kept:
                await self.ownership.claim(record.key)

    async def _connection(self, record: SessionRecord) -> tuple[_Live, bool]:
        """A connection (and the session's own provider) for one turn, and whether it is
        kept: this worker's own when it owns the session (built from the record if need
        be), else one for this turn only."""
        if (kept := await self._kept(record)) is not None:
            return kept, True
        async with self.ownership.building(record.key):
            if (kept := await self._kept(record)) is not None:
                return kept, True
            if await self.ownership.claim(record.key):
                await self._drop(record.key)  # dead, or of a session connected again since
                try:
                    live = await self._rebuild(record)
                except BaseException:
                    await self.ownership.release(record.key)
                    raise
                live.busy = 1
                self._live[record.key] = live
                log.info(
                    "session %s: connection rebuilt on worker %s", record.user_id, self.ownership.worker_id
                )
                return live, True
        # Another live worker owns the session and holds it open: serve this one turn only.
        return await self._rebuild(record), False

    async def _kept(self, record: SessionRecord) -> _Live | None:
        """The connection this worker keeps for the session, if current and still its own."""
        live = self._live.get(record.key)
        if live is None or live.session_id != record.session_id or not live.connection.alive:
            return None
        if not await self.ownership.claim(record.key):
            return None  # another worker took over; the janitor closes ours once idle
        live.busy += 1
        live.last_used = time.monotonic()
        return live

    async def _rebuild(self, record: SessionRecord) -> _Live:
        """A connection (and provider) from a record, checked as a connect would check them."""
        connection = self._new_connection(await self._resolve(record.server))
        own_llm = await self._own_llm(record.llm)
        try:
            await connection.open()
        except BaseException:
            await _close(connection, own_llm)
            raise
        return _Live(record.session_id, connection, own_llm)

    def _new_connection(self, spec: ServerSpec) -> McpConnection:
        return McpConnection(
            spec,
            connect_timeout_s=self._settings.connect_timeout_s,
            tool_timeout_s=self._settings.tool_timeout_s,
        )

    async def _own_record(
        self, principal: Principal, user_id: str, *, required: bool, missing: str = NO_SESSION
    ) -> SessionRecord | None:
        """The caller's session of user_id: another caller's of the same user_id is another
        session, which this one never sees (not even that it exists)."""
        _check_user_id(user_id)
        record = await self.records.get(session_key(principal.name, user_id))
        if record is None:
            if required:
                raise NotFound(missing)
            return None
        return record

    async def _drop(self, key: str) -> None:
        live = self._live.pop(key, None)
        if live is not None:
            await live.aclose()

    async def _resolve(self, spec: ServerSpec) -> ServerSpec:
        """The spec as this worker may open it: a stdio name mapped to the command this
        worker's configuration gives it, a URL that passes the URL policy."""
        if spec.transport == "stdio":
            argv = self._settings.stdio_servers.get(spec.url)
            if not argv:
                known = ", ".join(sorted(self._settings.stdio_servers)) or "none are configured"
                raise InvalidRequest(
                    "server.url", f"stdio server {spec.url!r} is not in llmchat.stdio_servers ({known})"
                )
            return ServerSpec(spec.url, "stdio", "", tuple(argv))
        if spec.transport not in TRANSPORTS:
            raise InvalidRequest(
                "server.transport", f"{spec.transport!r} is not one of {', '.join(TRANSPORTS)}"
            )
        await self._urls.check(spec.url)
        return ServerSpec(spec.url, spec.transport, spec.auth_token)

    async def _llm_choice(self, principal: Principal, llm: LLMChoice) -> LLMChoice:
        """The provider and model `llm` names, as this caller may use them (empty: the
        defaults): one the server serves as configured, or any remote kind this service
        knows with settings of the session's own (checked when its provider is built).

        No provider named: the default one, or the first configured one whose default model
        the caller may use. Only the provider chosen is asked for its models, and only when
        a model is named (bounded as ListModels is: one that does not answer in time is
        taken at its word, and a turn finds out)."""
        usable = self._core.providers_for(principal)
        provider = llm.provider or (usable[0] if usable else self._core.default_provider)
        config = dict(llm.config)
        model = llm.model
        if "model_id" in config:  # the documented name of Bedrock's and watsonx's model
            model_id = str(config.pop("model_id"))
            if model and model != model_id:
                raise InvalidRequest(
                    "llm.config.model_id", f"is {model_id!r} but llm.config.model is {model!r}"
                )
            model = model_id
        choice = replace(llm, provider=provider, model=model, config=config)
        if self._served_as_configured(choice):
            if not self._core.may_use(principal, provider, model):  # looks like a model nobody has
                raise NotFound(f"model {model or 'default'!r} not found")
            if model and await self._core.lists(provider, model) is False:
                raise InvalidRequest("llm.config.model", f"provider {provider} has no model {model!r}")
            return choice
        entry = entries().get(provider)
        if entry is None or entry.local:
            if entry is not None:  # the in-process engine runs as the server configured it
                name = sorted(config)[0]
                raise InvalidRequest(
                    f"llm.config.{name}", f"provider {provider} runs in-process and has no {name}"
                )
            known = sorted({*usable, *(k for k, e in entries().items() if not e.local)})
            raise InvalidRequest(
                "llm.provider", f"{provider!r} is not a provider this service knows ({', '.join(known)})"
            )
        if config and not self._settings.session_credentials:
            raise PermissionDenied(
                f"llm.config.{sorted(config)[0]}: this service takes no provider settings from sessions "
                "(llmchat.session_credentials is off); use a provider configured on the server"
            )
        return choice

    def _served_as_configured(self, choice: LLMChoice) -> bool:
        """The session brings no settings, and the server runs its provider."""
        return not choice.config and self._core.serves(choice.provider)

    async def _own_llm(self, choice: LLMChoice) -> Provider | None:
        """The session's own provider, started, when it brought settings or names a provider
        the server does not serve as configured; None when the server's serves it."""
        if self._served_as_configured(choice):
            return None
        settings = await session_settings(
            choice.provider, self._sections(choice.provider), choice.config, choice.model, self._urls
        )
        provider = entries()[choice.provider].factory(settings, choice.provider)
        await provider.__aenter__()  # closes what it opened if starting fails
        return provider


async def _close(connection: McpConnection | None, llm: Provider | None) -> None:
    try:
        if connection is not None:
            await connection.aclose()
    finally:
        if llm is not None:
            await llm.aclose()


def _check_user_id(user_id: str) -> None:
    if not user_id:
        raise InvalidRequest("user_id", "is required", message="User ID is required")
    if len(user_id) > 200 or any(c.isspace() or not c.isprintable() for c in user_id):
        raise InvalidRequest(
            "user_id",
            "must be 1 to 200 printable characters without spaces",
            message="Invalid user ID provided: it must be 1 to 200 printable characters without spaces",
        )
