"""The ChatSessionService servicer: decode, call the session manager, encode."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as pb_grpc
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

Context = grpc.aio.ServicerContext[Any, Any]


class ChatSessionServicer(pb_grpc.ChatSessionServiceServicer):
    def __init__(self, sessions: SessionManager, auth: AuthPolicy, catalogue: ServerCatalogue) -> None:
        self._sessions, self._auth, self._catalogue = sessions, auth, catalogue

    def _principal(self, context: Context) -> Principal:
        return self._auth.authenticate(context.invocation_metadata() or ())

    @errors_to_status()
    async def Connect(self, request: pb.ConnectRequest, context: Context) -> pb.ConnectResponse:
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
        events = await self._sessions.chat(self._principal(context), request.user_id, request.message)
        async with contextlib.aclosing(events) as running:
            async for event in running:
                if isinstance(event, TurnFinal):
                    return final(request.user_id, event)
        raise AssertionError("a turn always ends with its final event or an error")

    @errors_to_status()
    async def StreamChat(
        self, request: pb.StreamChatRequest, context: Context
    ) -> AsyncIterator[pb.StreamChatResponse]:
        context.set_trailing_metadata(request_trailer())  # unary calls get theirs from CallContext
        events = await self._sessions.chat(self._principal(context), request.user_id, request.message)
        async with contextlib.aclosing(events) as running:
            async for event in running:
                yield encode_event(request.user_id, event)

    @errors_to_status()
    async def Disconnect(self, request: pb.DisconnectRequest, context: Context) -> pb.DisconnectResponse:
        was = await self._sessions.disconnect(self._principal(context), request.user_id)
        return pb.DisconnectResponse(user_id=request.user_id, was_connected=was)

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


def _llm(llm: pb.LLMConfig) -> LLMChoice:
    return LLMChoice(
        provider=llm.provider,
        model=llm.model,
        temperature=llm.temperature if llm.HasField("temperature") else None,
        max_tokens=llm.max_tokens if llm.HasField("max_tokens") else None,
        top_p=llm.top_p if llm.HasField("top_p") else None,
        seed=llm.seed if llm.HasField("seed") else None,
        system_prompt=llm.system_prompt,
    )


def _encode_llm(llm: LLMChoice) -> pb.LLMConfig:
    out = pb.LLMConfig(provider=llm.provider, model=llm.model, system_prompt=llm.system_prompt)
    for name in ("temperature", "max_tokens", "top_p", "seed"):  # optional: unset stays unset
        if getattr(llm, name) is not None:
            setattr(out, name, getattr(llm, name))
    return out


def _invocation(i: ToolInvocation) -> pb.ToolInvocation:
    return pb.ToolInvocation(
        id=i.id,
        name=i.name,
        arguments_json=i.arguments,
        result=i.result,
        is_error=i.is_error,
        elapsed_ms=i.elapsed_ms,
    )


def final(user_id: str, event: TurnFinal) -> pb.ChatResponse:
    return pb.ChatResponse(
        user_id=user_id,
        response=event.response,
        tool_used=bool(event.tool_invocations),
        tools=[i.name for i in event.tool_invocations],
        tool_invocations=[_invocation(i) for i in event.tool_invocations],
        elapsed_ms=event.elapsed_ms,
        usage=pb.TurnUsage(
            prompt_tokens=event.usage.prompt_tokens,
            completion_tokens=event.usage.completion_tokens,
            cached_prompt_tokens=event.usage.cached_tokens,
            model_calls=event.model_calls,
        ),
    )


def encode_event(user_id: str, event: TurnEvent) -> pb.StreamChatResponse:
    if isinstance(event, TurnToken):
        return pb.StreamChatResponse(token=event.text)
    if isinstance(event, ToolStarted):
        return pb.StreamChatResponse(
            tool_start=pb.ToolStart(id=event.id, name=event.name, arguments_json=event.arguments)
        )
    if isinstance(event, ToolInvocation):
        if event.is_error:
            return pb.StreamChatResponse(tool_error=_invocation(event))
        return pb.StreamChatResponse(tool_end=_invocation(event))
    return pb.StreamChatResponse(final=final(user_id, event))
