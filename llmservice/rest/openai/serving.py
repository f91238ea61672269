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
from fastapi.responses import Response, StreamingResponse
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
            return _json(await self._collect(req, msg, request, metadata))
        call = self._stub.Chat(msg, metadata=metadata)
        async with cancelled_on_disconnect(request, call):
            reply = await call
        return _json(_completion(reply, reply.content, codec.tool_calls(reply.tool_calls), None))

    async def _collect(
        self, req: oa.ChatCompletionRequest, msg: pb.LLMChatRequest, request: Request, metadata: Metadata
    ) -> oa.ChatCompletion:
        """A whole reply from StreamChat, for requests that want logprobs."""
        text: list[str] = []
        logprobs: list[oa.TokenLogprob] = []
        calls: dict[int, oa.ToolCall] = {}
        last = pb.LLMChatChunk()
        call = self._stub.StreamChat(msg, metadata=metadata)
        async with cancelled_on_disconnect(request, call):
            async for chunk in call:
                last = chunk
                if chunk.token:
                    text.append(chunk.token)
                    if chunk.HasField("signal"):
                        logprobs.append(codec.logprob(chunk, req.top_logprobs or 0))
                if chunk.HasField("tool_call"):
                    _merge_call(calls, chunk.tool_call)
        merged = [calls[i] for i in sorted(calls)]
        return _completion(last, "".join(text), merged, oa.Logprobs(content=logprobs, refusal=None))

    async def _stream(
        self, req: oa.ChatCompletionRequest, msg: pb.LLMChatRequest, request: Request, metadata: Metadata
    ) -> Response:
        call = self._stub.StreamChat(msg, metadata=metadata)
        async with cancelled_on_disconnect(request, call):  # it may wait in the queue
            first = await call.read()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        frames = _frames(call, first, include_usage, req.top_logprobs or 0 if req.logprobs else None)
        return StreamingResponse(
            frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def models(self, metadata: Metadata) -> Response:
        return _json(oa.ModelList(object="list", data=await self._models(metadata)))

    async def model(self, model_id: str, metadata: Metadata) -> Response:
        for m in await self._models(metadata):
            if m.id == model_id:
                return _json(m)
        raise APIError(
            404, f"model {model_id!r} not found", "not_found_error", param="model", code="model_not_found"
        )

    async def _models(self, metadata: Metadata) -> list[oa.Model]:
        reply = await self._stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
        seen: dict[str, oa.Model] = {}
        for m in reply.models:
            if m.id not in seen:  # one entry per id, though several providers serve it
                seen[m.id] = oa.Model(id=m.id, object="model", created=0, owned_by=m.provider)
        return list(seen.values())


def _completion(
    reply: pb.LLMChatResponse | pb.LLMChatChunk,
    content: str,
    calls: list[oa.ToolCall],
    logprobs: oa.Logprobs | None,
) -> oa.ChatCompletion:
    """The whole reply, from the service's reply (or a stream's last chunk) and its parts."""
    message = oa.ChatCompletionMessage(
        role="assistant", content=content or (None if calls else ""), refusal=None
    )
    if calls:  # absent, not null, when there are none
        message.tool_calls = calls
    choice = oa.ChatCompletionChoice(
        index=0,
        message=message,
        finish_reason=codec.FINISH.get(reply.finish_reason, "stop"),
        logprobs=logprobs,
    )
    return oa.ChatCompletion(
        id=_completion_id(),
        object="chat.completion",
        created=int(time.time()),
        model=reply.model,
        choices=[choice],
        usage=codec.usage(reply),
        system_fingerprint=None,
    )


async def _frames(
    call: Any, first: Any, include_usage: bool, top_logprobs: int | None
) -> AsyncIterator[bytes]:
    frames = _ChunkFrames(getattr(first, "model", ""))
    # The role frame goes out with the first token's, in one write.
    role = frames.choice(oa.ChoiceDelta(role="assistant", content=""))
    chunk = first
    try:
        while chunk is not grpc.aio.EOF:
            if chunk.done:
                yield role + frames.choice(
                    oa.ChoiceDelta(), finish=codec.FINISH.get(chunk.finish_reason, "stop")
                )
                role = b""
                if include_usage:
                    yield frames.usage(chunk)
                break
            delta, logprobs = codec.delta(chunk, top_logprobs)
            if delta.model_fields_set:
                yield role + frames.choice(delta, logprobs)
                role = b""
            chunk = await call.read()
        yield role + b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:  # failed midway: say so in the stream itself
        yield b"data: " + json.dumps(from_grpc(exc).body()).encode() + b"\n\n"
    finally:
        call.cancel()  # the client went away (or we are done): the service stops generating


class _ChunkFrames:
    """The event-stream frames of one streamed completion. Its chunks differ only in their
    choice (and the last in its usage), so the rest of a frame is written once per stream."""

    def __init__(self, model: str) -> None:
        self._chunk = oa.ChatCompletionChunk(
            id=_completion_id(),
            object="chat.completion.chunk",
            created=int(time.time()),
            model=model,
            system_fingerprint=None,
            choices=[],
        )
        # Each frame writes its choice between the halves. `"choices":[]` cannot occur
        # inside a JSON string, where its quotes would be escaped.
        head, tail = _event_json(self._chunk).split(b'"choices":[]')
        self._head, self._tail = b"data: " + head + b'"choices":[', b"]" + tail + b"\n\n"

    def choice(
        self,
        delta: oa.ChoiceDelta,
        logprobs: oa.Logprobs | None = None,
        finish: oa.FinishReason | None = None,
    ) -> bytes:
        choice = oa.ChunkChoice(index=0, delta=delta, logprobs=logprobs, finish_reason=finish)
        return self._head + _event_json(choice) + self._tail

    def usage(self, last: pb.LLMChatChunk) -> bytes:
        """The usage chunk (stream_options.include_usage): no choices, the whole reply's usage."""
        chunk = self._chunk.model_copy(update={"usage": codec.usage(last)})
        return b"data: " + _event_json(chunk) + b"\n\n"


# JSON may carry U+0085, U+2028 and U+2029 unescaped, but a reader that splits an event
# stream into lines as str.splitlines does (httpx's aiter_lines does) would cut the event.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def _event_json(reply: oa.ChatCompletionChunk | oa.ChunkChoice) -> bytes:
    """oa.dump, safe to put on one line of an event stream."""
    data = oa.dump(reply)
    if data.isascii():
        return data
    for raw, escaped in _LINE_BREAKS:
        data = data.replace(raw, escaped)
    return data


def _merge_call(calls: dict[int, oa.ToolCall], d: pb.ToolCallDelta) -> None:
    call = calls.get(d.index)
    if call is None:
        call = calls[d.index] = oa.ToolCall(
            id="", type="function", function=oa.FunctionCall(name="", arguments="")
        )
    call.id = call.id or d.id
    call.function.name = call.function.name or d.name
    call.function.arguments += d.arguments_json


def _json(reply: oa.ChatCompletion | oa.ModelList | oa.Model) -> Response:
    return Response(oa.dump(reply), media_type="application/json")


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
