"""The /llmchat calls over ChatSessionService: decode, call, encode.

A streamed turn is answered once its first event has come back, so a missing session
or a refused caller is an ordinary HTTP error; a turn that fails later ends with an
`event: error` frame that says whether retrying can help. A client that goes away
cancels the gRPC call, and with it the turn.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import Request
from fastapi.responses import StreamingResponse

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import llm_service_pb2 as llm_pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as llm_grpc
from llmservice.rest.disconnect import cancelled_on_disconnect
from llmservice.rest.errors import from_grpc
from llmservice.rest.llmchat import protocol as lc

Metadata = tuple[tuple[str, str], ...]
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
CAPABILITIES = ("streaming", "tools", "vision", "embeddings", "signals", "completion_only")


class LLMChatServing:
    def __init__(
        self, sessions: pb_grpc.ChatSessionServiceAsyncStub, llm: llm_grpc.LLMServiceAsyncStub
    ) -> None:
        self._sessions, self._llm = sessions, llm

    async def connect(self, body: lc.ConnectRequest, metadata: Metadata) -> dict[str, Any]:
        config = body.llm.config
        llm = pb.LLMConfig(provider=body.llm.provider, model=config.model, system_prompt=config.system_prompt)
        for name in ("temperature", "max_tokens", "top_p", "seed"):
            if getattr(config, name) is not None:
                setattr(llm, name, getattr(config, name))
        server = pb.McpServer(
            url=body.server.url, transport=body.server.transport, auth_token=body.server.auth_token or ""
        )
        reply = await self._sessions.Connect(
            pb.ConnectRequest(user_id=body.user_id, server=server, llm=llm, streaming=body.streaming),
            metadata=metadata,
        )
        return {
            "status": reply.status,
            "user_id": reply.user_id,
            "provider": reply.provider,
            "tool_count": reply.tool_count,
            "tools": list(reply.tools),
        }

    async def chat(self, body: lc.ChatRequest, metadata: Metadata, request: Request) -> dict[str, Any]:
        turn = pb.ChatRequest(user_id=body.user_id, message=body.message)
        call = self._sessions.Chat(turn, metadata=metadata)
        async with cancelled_on_disconnect(request, call):  # a client that leaves ends the turn
            reply = await call
        return final(reply)

    async def stream(self, body: lc.ChatRequest, metadata: Metadata, request: Request) -> StreamingResponse:
        call = self._sessions.StreamChat(
            pb.StreamChatRequest(user_id=body.user_id, message=body.message), metadata=metadata
        )
        async with cancelled_on_disconnect(request, call):  # the first event may be a long tool call away
            first = await call.read()
        return StreamingResponse(
            _frames(call, first), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def disconnect(self, body: lc.DisconnectRequest, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.Disconnect(pb.DisconnectRequest(user_id=body.user_id), metadata=metadata)
        return {"user_id": reply.user_id, "status": "disconnected", "was_connected": reply.was_connected}

    async def status(self, user_id: str, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.GetStatus(pb.GetStatusRequest(user_id=user_id), metadata=metadata)
        return {"user_id": reply.user_id, "connected": reply.connected}

    async def config(self, user_id: str, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.GetConfig(pb.GetConfigRequest(user_id=user_id), metadata=metadata)
        llm: dict[str, Any] = {"model": reply.llm.model, "system_prompt": reply.llm.system_prompt}
        for name in ("temperature", "max_tokens", "top_p", "seed"):
            llm[name] = getattr(reply.llm, name) if reply.llm.HasField(name) else None
        return {
            "user_id": reply.user_id,
            "server": {
                "url": reply.server.url,
                "transport": reply.server.transport,
                "auth_token": reply.server.auth_token,
            },
            "llm": {"provider": reply.llm.provider, "config": llm},
            "streaming": reply.streaming,
            "tools": list(reply.tools),
        }

    async def servers(self, refresh: bool, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.ListServers(pb.ListServersRequest(refresh=refresh), metadata=metadata)
        servers = [
            {
                "name": s.name,
                "description": s.description,
                "url": s.url,
                "transport": s.transport,
                "requires_token": s.requires_token,
                "status": s.status,
                "tool_count": len(s.tools),
                "tools": list(s.tools),
                "error": s.error,
            }
            for s in reply.servers
        ]
        return {"servers": servers}

    async def models(self, metadata: Metadata) -> dict[str, Any]:
        reply = await self._llm.ListModels(llm_pb.ListModelsRequest(), metadata=metadata)
        models = [
            {
                "id": m.id,
                "provider": m.provider,
                "capabilities": [c for c in CAPABILITIES if getattr(m.capabilities, c, False)],
            }
            for m in reply.models
        ]
        return {"models": models}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


def invocation(i: pb.ToolInvocation) -> dict[str, Any]:
    return {
        "id": i.id,
        "name": i.name,
        "arguments": _arguments(i.arguments_json),
        "result": i.result,
        "is_error": i.is_error,
        "elapsed_ms": round(i.elapsed_ms, 3),
    }


def final(reply: pb.ChatResponse) -> dict[str, Any]:
    return {
        "user_id": reply.user_id,
        "response": reply.response,
        "tool_used": reply.tool_used,
        "tools": list(reply.tools),
        "tool_invocations": [invocation(i) for i in reply.tool_invocations],
        "elapsed_ms": round(reply.elapsed_ms, 3),
        "usage": {
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "cached_prompt_tokens": reply.usage.cached_prompt_tokens,
            "model_calls": reply.usage.model_calls,
        },
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def encode(event: pb.StreamChatResponse) -> bytes:
    kind = event.WhichOneof("event")
    if kind == "token":
        return sse("token", {"text": event.token})
    if kind == "tool_start":
        s = event.tool_start
        return sse("tool_start", {"id": s.id, "name": s.name, "arguments": _arguments(s.arguments_json)})
    if kind == "tool_end":
        return sse("tool_end", invocation(event.tool_end))
    if kind == "tool_error":
        body = invocation(event.tool_error)
        body["error"] = body.pop("result")
        return sse("tool_error", body)
    return sse("final", final(event.final))


async def _frames(call: Any, first: Any) -> AsyncIterator[bytes]:
    event = first
    try:
        while event is not grpc.aio.EOF:
            yield encode(event)
            event = await call.read()
    except grpc.aio.AioRpcError as exc:  # failed midway: say so, and whether to retry
        error = from_grpc(exc)
        body = error.body()["error"]
        body.update({"status": error.status, "retryable": exc.code() in RETRYABLE})
        yield sse("error", body)
    finally:
        call.cancel()  # the client went away (or we are done): the turn stops
