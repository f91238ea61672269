"""Chat completions and models over LLMService: decode, call the service, encode.

A stream is answered only once its first chunk has come back, so an unknown model or
a bad key is an ordinary HTTP error, never a stream that fails at byte zero. A stream
that fails later ends with an error frame. When the client goes away, whether the
reply is whole, streamed, or still waiting in the queue, the gRPC call is cancelled:
generation stops and the request leaves the queue.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.rest.disconnect import cancelled_on_disconnect
from llmservice.rest.errors import APIError, from_grpc
from llmservice.rest.openai import codec
from llmservice.rest.openai import protocol as oa

Metadata = tuple[tuple[str, str], ...]


class OpenAIServing:
    def __init__(self, stub: pb_grpc.LLMServiceAsyncStub) -> None:
        self._stub = stub

    async def chat(
        self, req: oa.ChatCompletionRequest, request: Request, metadata: Metadata, priority: str | None
    ) -> Response:
        msg = codec.to_grpc(req, priority)
        if req.stream:
            return await self._stream(req, msg, request, metadata)
        if req.logprobs:  # per-token signals only come with StreamChat
            return JSONResponse(await self._collect(req, msg, request, metadata))
        call = self._stub.Chat(msg, metadata=metadata)
        try:
            async with cancelled_on_disconnect(request, call):
                reply = await call
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        calls = codec.tool_calls(reply.tool_calls)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content or (None if calls else ""),
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        return JSONResponse(
            {
                "id": _completion_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": reply.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": codec.FINISH.get(reply.finish_reason, "stop"),
                        "logprobs": None,
                    }
                ],
                "usage": codec.usage(reply),
                "system_fingerprint": None,
            }
        )

    async def _collect(
        self, req: oa.ChatCompletionRequest, msg: pb.LLMChatRequest, request: Request, metadata: Metadata
    ) -> dict[str, Any]:
        """A whole reply from StreamChat, for requests that want logprobs."""
        text: list[str] = []
        logprobs: list[dict[str, Any]] = []
        calls: dict[int, dict[str, Any]] = {}
        last = pb.LLMChatChunk()
        call = self._stub.StreamChat(msg, metadata=metadata)
        try:
            async with cancelled_on_disconnect(request, call):
                async for chunk in call:
                    last = chunk
                    if chunk.token:
                        text.append(chunk.token)
                        if chunk.HasField("signal"):
                            logprobs.append(_trimmed(codec.logprob(chunk), req.top_logprobs or 0))
                    if chunk.HasField("tool_call"):
                        _merge_call(calls, chunk.tool_call)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(text) or (None if calls else ""),
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": last.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": codec.FINISH.get(last.finish_reason, "stop"),
                    "logprobs": {"content": logprobs, "refusal": None},
                }
            ],
            "usage": codec.usage(last),
            "system_fingerprint": None,
        }

    async def _stream(
        self, req: oa.ChatCompletionRequest, msg: pb.LLMChatRequest, request: Request, metadata: Metadata
    ) -> Response:
        call = self._stub.StreamChat(msg, metadata=metadata)
        try:
            async with cancelled_on_disconnect(request, call):  # it may wait in the queue
                first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frames = _frames(call, first, include_usage, req.top_logprobs or 0 if req.logprobs else None)
        return StreamingResponse(
            frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def models(self, metadata: Metadata) -> list[dict[str, Any]]:
        try:
            reply = await self._stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc) from None
        seen: dict[str, dict[str, Any]] = {}
        for m in reply.models:
            seen.setdefault(m.id, {"id": m.id, "object": "model", "created": 0, "owned_by": m.provider})
        return list(seen.values())

    async def model(self, model_id: str, metadata: Metadata) -> dict[str, Any]:
        for m in await self.models(metadata):
            if m["id"] == model_id:
                return m
        raise APIError(
            404, f"model {model_id!r} not found", "not_found_error", param="model", code="model_not_found"
        )


async def _frames(
    call: Any, first: Any, include_usage: bool, top_logprobs: int | None
) -> AsyncIterator[bytes]:
    completion_id, created = _completion_id(), int(time.time())
    chunk = first
    model = getattr(first, "model", "")

    def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    # The role frame goes out with the first token's, in one write.
    role = frame(
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    )
    try:
        while chunk is not grpc.aio.EOF:
            if chunk.done:
                finish = codec.FINISH.get(chunk.finish_reason, "stop")
                yield role + frame([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
                role = b""
                if include_usage:
                    yield frame([], usage=codec.usage(chunk))
                break
            delta: dict[str, Any] = {}
            logprobs = None
            if chunk.token:
                delta["content"] = chunk.token
                if top_logprobs is not None and chunk.HasField("signal"):
                    logprobs = {"content": [_trimmed(codec.logprob(chunk), top_logprobs)], "refusal": None}
            if chunk.HasField("tool_call"):
                delta["tool_calls"] = [_call_delta(chunk.tool_call)]
            if delta:
                yield role + frame(
                    [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}]
                )
                role = b""
            chunk = await call.read()
        yield role + b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:  # failed midway: say so in the stream itself
        yield b"data: " + json.dumps(from_grpc(exc).body()).encode() + b"\n\n"
    finally:
        call.cancel()  # the client went away (or we are done): the service stops generating


def _call_delta(d: pb.ToolCallDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"index": d.index, "function": {"arguments": d.arguments_json}}
    if d.id:
        out["id"], out["type"] = d.id, "function"
    if d.name:
        out["function"]["name"] = d.name
    return out


def _merge_call(calls: dict[int, dict[str, Any]], d: pb.ToolCallDelta) -> None:
    call = calls.setdefault(
        d.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    call["id"] = call["id"] or d.id
    call["function"]["name"] = call["function"]["name"] or d.name
    call["function"]["arguments"] += d.arguments_json


def _trimmed(entry: dict[str, Any], top: int) -> dict[str, Any]:
    entry["top_logprobs"] = entry["top_logprobs"][:top]
    return entry


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
