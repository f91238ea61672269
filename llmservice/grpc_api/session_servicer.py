"""The ChatSessionService servicer: decode, call the session manager, encode.

A turn's events are stamped with wall-clock times (a tool's `start` and `end`) as they
pass through here, which is as they happen. The turns in flight (Chat, StreamChat, over
gRPC or in process) are counted here, for draining: as LLMServicer does, a draining
servicer refuses new turns with UNAVAILABLE, and `wait_idle` says when the last one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as pb_grpc
from llmservice.grpc_api.in_flight import InFlight
from llmservice.grpc_api.status import errors_to_status
from llmservice.kernel.context import request_trailer
from llmservice.service.auth import AuthPolicy, Principal
from llmservice.service.sessions import (
    LLMChoice,
    ServerConfig,
    SessionManager,
    ToolInvocation,
    ToolStarted,
    TurnEvent,
    TurnFinal,
    TurnToken,
)
from llmservice.service.sessions.catalogue import ServerCatalogue
from llmservice.service.sessions.manager import SHUTTING_DOWN

Context = grpc.aio.ServicerContext[Any, Any]
# After the cut at the end of a drain's grace: how long the turns get to save their
# history and answer UNAVAILABLE before the server cuts the calls themselves.
CUT_SETTLE_S = 3.0


class ChatSessionServicer(pb_grpc.ChatSessionServiceServicer):
    def __init__(self, sessions: SessionManager, auth: AuthPolicy, catalogue: ServerCatalogue) -> None:
        self._sessions, self._auth, self._catalogue = sessions, auth, catalogue
        self._turns = InFlight(SHUTTING_DOWN)  # turns and connects

    def start_draining(self) -> None:
        """From now on, refuse new turns and connects with UNAVAILABLE (the other calls, such
        as Disconnect and GetConfig, are still served)."""
        self._turns.start_draining()

    async def wait_idle(self) -> None:
        """Return once no turn (Chat or StreamChat) or connect is running."""
        await self._turns.wait_idle()

    async def cut_turns(self, settle_s: float = CUT_SETTLE_S) -> None:
        """End the turns still running (SessionManager.cut_turns: each keeps its history
        consistent and answers UNAVAILABLE), and wait up to `settle_s` for them to end."""
        self._sessions.cut_turns()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_idle(), settle_s)

    def _principal(self, context: Context) -> Principal:
        return self._auth.authenticate(context.invocation_metadata() or ())

    @errors_to_status()
    async def Connect(self, request: pb.ConnectRequest, context: Context) -> pb.ConnectResponse:
        with self._turns.track():  # a connect is work too: refused while draining, waited for if begun
            connected = await self._sessions.connect(
                self._principal(context),
                request.user_id,
                _server(request.server),
                _llm(request.llm),
                request.streaming,
            )
        return pb.ConnectResponse(
            status="connected",
            user_id=connected.user_id,
            provider=connected.provider,
            tool_count=len(connected.tools),
            tools=connected.tools,
        )

    @errors_to_status()
    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        with self._turns.track():
            events = await self._sessions.chat(self._principal(context), request.user_id, request.message)
            clock = _Clock()
            async with contextlib.aclosing(events) as running:
                async for event in running:
                    clock.saw(event)
                    if isinstance(event, TurnFinal):
                        return final(request.user_id, event, clock)
        raise AssertionError("a turn always ends with its final event or an error")

    @errors_to_status()
    async def StreamChat(
        self, request: pb.StreamChatRequest, context: Context
    ) -> AsyncIterator[pb.StreamChatResponse]:
        context.set_trailing_metadata(request_trailer())  # unary calls get theirs from CallContext
        with self._turns.track():
            events = await self._sessions.chat(self._principal(context), request.user_id, request.message)
            await context.send_initial_metadata(TURN_STARTED)  # what fails from here on is the turn's
            clock = _Clock()
            async with contextlib.aclosing(events) as running:
                async for event in running:
                    clock.saw(event)
                    yield encode_event(request.user_id, event, clock)

    @errors_to_status()
    async def Disconnect(self, request: pb.DisconnectRequest, context: Context) -> pb.DisconnectResponse:
        was = await self._sessions.disconnect(self._principal(context), request.user_id)
        if was:
            status, message = "disconnected", "Successfully disconnected"
        else:
            status, message = "no_active_session", "No active session to disconnect"
        return pb.DisconnectResponse(
            user_id=request.user_id, was_connected=was, status=status, message=message
        )

    @errors_to_status()
    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.GetStatusResponse:
        connected = await self._sessions.status(self._principal(context), request.user_id)
        return pb.GetStatusResponse(user_id=request.user_id, connected=connected)

    @errors_to_status()
    async def GetConfig(self, request: pb.GetConfigRequest, context: Context) -> pb.GetConfigResponse:
        record = await self._sessions.config(self._principal(context), request.user_id)
        server = record.server
        return pb.GetConfigResponse(
            user_id=record.user_id,
            server=pb.McpServer(url=server.url, transport=server.transport, auth_token=server.auth_token),
            llm=_encode_llm(record.llm),
            streaming=record.streaming,
            tools=record.tools,
        )

    @errors_to_status()
    async def ListServers(self, request: pb.ListServersRequest, context: Context) -> pb.ListServersResponse:
        self._principal(context)
        entries = await self._catalogue.entries(refresh=request.refresh)
        return pb.ListServersResponse(
            servers=[
                pb.CatalogueServer(
                    name=e.name,
                    description=e.description,
                    url=e.url,
                    transport=e.transport,
                    requires_token=e.requires_token,
                    status=e.status,
                    tools=e.tools,
                    error=e.error,
                )
                for e in entries
            ]
        )


def _server(server: pb.McpServer) -> ServerConfig:
    return ServerConfig(server.url, server.transport, server.auth_token)


SAMPLING = ("temperature", "max_tokens", "top_p", "seed")  # optional: unset stays unset
FIRST_PROVIDER_FIELD = 8  # LLMConfig's fields from here on: the session's own provider settings
TURN_STARTED = (("llm-turn", "started"),)


def _llm(llm: pb.LLMConfig) -> LLMChoice:
    fields = llm.ListFields()  # set strings, present numbers
    given = {f.name: value for f, value in fields}
    config = {f.name: value for f, value in fields if f.number >= FIRST_PROVIDER_FIELD}
    return LLMChoice(
        provider=llm.provider,
        model=llm.model,
        system_prompt=llm.system_prompt,
        config=config,
        **{name: given.get(name) for name in SAMPLING},
    )


def _encode_llm(llm: LLMChoice) -> pb.LLMConfig:
    out = pb.LLMConfig(provider=llm.provider, model=llm.model, system_prompt=llm.system_prompt)
    for name in SAMPLING:
        if getattr(llm, name) is not None:
            setattr(out, name, getattr(llm, name))
    for name, value in llm.config.items():
        setattr(out, name, value)
    return out


class _Clock:
    """When each tool call of a turn started and ended, as its events went by (RFC 3339)."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}
        self.ended: dict[str, str] = {}

    def saw(self, event: TurnEvent) -> None:
        if isinstance(event, ToolStarted):
            self.started[event.id] = _now()
        elif isinstance(event, ToolInvocation):
            self.ended[event.id] = _now()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _invocation(i: ToolInvocation, clock: _Clock) -> pb.ToolInvocation:
    return pb.ToolInvocation(
        id=i.id,
        tool=i.name,
        input_json=i.arguments,
        output=i.result,
        is_error=i.is_error,
        elapsed_ms=i.elapsed_ms,
        start=clock.started.get(i.id, ""),
        end=clock.ended.get(i.id, ""),
    )


def final(user_id: str, event: TurnFinal, clock: _Clock) -> pb.ChatResponse:
    return pb.ChatResponse(
        user_id=user_id,
        response=event.response,
        tool_used=bool(event.tool_invocations),
        tools=[i.name for i in event.tool_invocations],
        tool_invocations=len(event.tool_invocations),
        tool_calls=[_invocation(i, clock) for i in event.tool_invocations],
        elapsed_ms=round(event.elapsed_ms),
        usage=pb.TurnUsage(
            prompt_tokens=event.usage.prompt_tokens,
            completion_tokens=event.usage.completion_tokens,
            cached_prompt_tokens=event.usage.cached_tokens,
            model_calls=event.model_calls,
        ),
    )


def encode_event(user_id: str, event: TurnEvent, clock: _Clock) -> pb.StreamChatResponse:
    if isinstance(event, TurnToken):
        return pb.StreamChatResponse(token=event.text)
    if isinstance(event, ToolStarted):
        start = clock.started.get(event.id, "")
        return pb.StreamChatResponse(
            tool_start=pb.ToolStart(id=event.id, tool=event.name, input_json=event.arguments, start=start)
        )
    if isinstance(event, ToolInvocation):
        if event.is_error:
            return pb.StreamChatResponse(tool_error=_invocation(event, clock))
        return pb.StreamChatResponse(tool_end=_invocation(event, clock))
    return pb.StreamChatResponse(final=final(user_id, event, clock))
