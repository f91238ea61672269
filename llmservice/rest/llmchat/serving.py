"""The /llmchat calls over ChatSessionService: decode, call, encode, in the documented shapes.

A streamed turn is answered once the service has accepted it (its `llm-turn: started`
metadata), so a missing session, an empty message or a refused caller is an ordinary
HTTP error; whatever fails after that, in the first model call or the last, ends the
stream with an `event: error` frame that says whether retrying can help. A client that
goes away cancels the gRPC call, and with it the turn.

The stream's events, as the documented service sends them (its fields first, ours after):
  token       {"content"}
  tool_start  {"type", "id", "tool", "input", "start"}
  tool_end    {"type", "id", "tool", "output", "end", "is_error", "elapsed_ms", "start"}
  tool_error  {"type", "id", "tool", "error", "time", "is_error", "elapsed_ms", "start"}
  final       {"type", "content", "tool_used", "tools", "elapsed_ms", "user_id",
               "tool_invocations", "tool_calls", "usage"}
  error       {"type", "error", "recoverable", "status", "param"}
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
from llmservice.rest.errors import APIError, from_grpc
from llmservice.rest.llmchat import protocol as lc

Metadata = tuple[tuple[str, str], ...]
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
CAPABILITIES = ("streaming", "tools", "vision", "embeddings", "signals", "completion_only")
SAMPLING = ("temperature", "max_tokens", "top_p", "seed")
# LLMConfig's fields from here on: the session's own provider settings (lc.LLMSettings's
# fields of the same names).
FIRST_PROVIDER_FIELD = 8
PROVIDER_FIELDS = tuple(f.name for f in pb.LLMConfig.DESCRIPTOR.fields if f.number >= FIRST_PROVIDER_FIELD)
TURN_STARTED = ("llm-turn", "started")


class LLMChatServing:
    def __init__(
        self, sessions: pb_grpc.ChatSessionServiceAsyncStub, llm: llm_grpc.LLMServiceAsyncStub
    ) -> None:
        self._sessions, self._llm = sessions, llm

    async def connect(self, body: lc.ConnectRequest, metadata: Metadata) -> dict[str, Any]:
        config = body.llm.config
        llm = pb.LLMConfig(provider=body.llm.provider, model=config.model, system_prompt=config.system_prompt)
        for name in (*SAMPLING, *PROVIDER_FIELDS):
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
        async with cancelled_on_disconnect(request, call):
            accepted = TURN_STARTED in tuple(await call.initial_metadata() or ())
            if not accepted:  # refused before the turn began: the call's error is the answer
                await call.read()
                raise AssertionError("a turn that was not started ends in an error")
        return StreamingResponse(
            _frames(call),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def disconnect(self, body: lc.DisconnectRequest, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.Disconnect(pb.DisconnectRequest(user_id=body.user_id), metadata=metadata)
        return {
            "status": reply.status,
            "user_id": reply.user_id,
            "message": reply.message,
            "was_connected": reply.was_connected,
        }

    async def status(self, user_id: str, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.GetStatus(pb.GetStatusRequest(user_id=user_id), metadata=metadata)
        return {"user_id": reply.user_id, "connected": reply.connected}

    async def config(self, user_id: str, metadata: Metadata) -> dict[str, Any]:
        reply = await self._sessions.GetConfig(pb.GetConfigRequest(user_id=user_id), metadata=metadata)
        given = {f.name: value for f, value in reply.llm.ListFields()}  # set strings, present numbers
        llm: dict[str, Any] = {"model": reply.llm.model, "system_prompt": reply.llm.system_prompt}
        llm |= {name: given.get(name) for name in SAMPLING}
        llm |= {name: given[name] for name in PROVIDER_FIELDS if name in given}
        return {
            "user_id": reply.user_id,
            "mcp_server": {
                "url": reply.server.url,
                "transport": reply.server.transport,
                "auth_token": reply.server.auth_token,
            },
            "llm": {"provider": reply.llm.provider, "config": llm},
            "enable_streaming": reply.streaming,
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


def tool_call(i: pb.ToolInvocation) -> dict[str, Any]:
    return {
        "id": i.id,
        "tool": i.tool,
        "input": _arguments(i.input_json),
        "output": i.output,
        "is_error": i.is_error,
        "elapsed_ms": round(i.elapsed_ms, 3),
        "start": i.start,
        "end": i.end,
    }


def final(reply: pb.ChatResponse) -> dict[str, Any]:
    return {
        "user_id": reply.user_id,
        "response": reply.response,
        "tool_used": reply.tool_used,
        "tools": list(reply.tools),
        "tool_invocations": reply.tool_invocations,
        "elapsed_ms": reply.elapsed_ms,
        "tool_calls": [tool_call(i) for i in reply.tool_calls],
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
        return sse("token", {"content": event.token})
    if kind == "tool_start":
        s = event.tool_start
        body = {"type": "tool_start", "id": s.id, "tool": s.tool, "input": _arguments(s.input_json)}
        return sse("tool_start", {**body, "start": s.start})
    if kind == "tool_end":
        call = tool_call(event.tool_end)
        return sse("tool_end", {"type": "tool_end", **call})
    if kind == "tool_error":
        call = tool_call(event.tool_error)
        call["error"], call["time"] = call.pop("output"), call.pop("end")
        return sse("tool_error", {"type": "tool_error", **call})
    done = final(event.final)
    content = done.pop("response")
    return sse("final", {"type": "final", "content": content, **done})


# How the documented service words a failed stream, by what failed.
_STREAM_ERRORS = {
    grpc.StatusCode.UNAVAILABLE: "Service error: {}",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Request timed out waiting for LLM response: {}",
    grpc.StatusCode.INTERNAL: "Unexpected error: {}",
    grpc.StatusCode.UNKNOWN: "Unexpected error: {}",
}


def stream_error(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    error: APIError = from_grpc(exc)
    message = _STREAM_ERRORS.get(exc.code(), "{}").format(error.message)
    retryable = exc.code() in RETRYABLE
    return {
        "type": "error",
        "error": message,
        "recoverable": retryable,
        "status": error.status,
        "param": error.param,
    }


async def _frames(call: Any) -> AsyncIterator[bytes]:
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            yield encode(event)
    except grpc.aio.AioRpcError as exc:  # failed midway: say so, and whether to retry
        yield sse("error", stream_error(exc))
    finally:
        call.cancel()  # the client went away (or we are done): the turn stops
