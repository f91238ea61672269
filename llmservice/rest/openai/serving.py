"""Chat completions and models over LLMService: decode, call the service, encode.

A stream is answered only once its first chunk has come back, so an unknown model or
a bad key is an ordinary HTTP error, never a stream that fails at byte zero. A stream
that fails later ends with an error frame. When the client goes away, whether the
reply is whole, streamed, or still waiting in the queue, the gRPC call is cancelled:
generation stops and the request leaves the queue.
"""

from __future__ import annotations

import asyncio
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
from llmservice.rest.disconnect import all_of, cancelled_on_disconnect
from llmservice.rest.errors import APIError, from_grpc
from llmservice.rest.event_stream import line_safe
from llmservice.rest.openai import codec
from llmservice.rest.openai import protocol as oa

Metadata = tuple[tuple[str, str], ...]


class OpenAIServing:
    def __init__(self, stub: pb_grpc.LLMServiceAsyncStub) -> None:
        self._stub = stub

    async def chat(
        self, req: oa.ChatCompletionRequest, request: Request, metadata: Metadata, priority: str | None
    ) -> Response:
        msgs = codec.choices(codec.to_grpc(req, priority), req.n or 1)
        legacy = req.functions is not None
        if req.stream:
            return await self._stream(req, msgs, request, metadata, legacy)
        parts: list[_Choice]
        if req.logprobs:  # per-token signals only come with StreamChat
            streams = [self._stub.StreamChat(m, metadata=metadata) for m in msgs]
            async with cancelled_on_disconnect(request, *streams):
                parts = await all_of(streams, [_collect(req, c) for c in streams])
        else:
            calls = [self._stub.Chat(m, metadata=metadata) for m in msgs]
            async with cancelled_on_disconnect(request, *calls):
                replies = await all_of(calls, calls)
            parts = [(r, r.content, codec.tool_calls(r.tool_calls), None) for r in replies]
        return _json(_completion(parts, legacy))

    async def _stream(
        self,
        req: oa.ChatCompletionRequest,
        msgs: list[pb.LLMChatRequest],
        request: Request,
        metadata: Metadata,
        legacy: bool,
    ) -> Response:
        calls = [self._stub.StreamChat(m, metadata=metadata) for m in msgs]
        async with cancelled_on_disconnect(request, *calls):  # it may wait in the queue
            firsts = await all_of(calls, [c.read() for c in calls])
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        top_logprobs = req.top_logprobs or 0 if req.logprobs else None
        if len(calls) == 1:
            frames = _frames(calls[0], firsts[0], include_usage, top_logprobs, legacy)
        else:
            frames = _frames_of_choices(calls, firsts, include_usage, top_logprobs, legacy)
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


# One choice of a whole reply: the reply (or a stream's last chunk), its text, calls, logprobs.
_Choice = tuple[pb.LLMChatResponse | pb.LLMChatChunk, str, list[oa.ToolCall], oa.Logprobs | None]


async def _collect(req: oa.ChatCompletionRequest, call: Any) -> _Choice:
    """A whole reply from StreamChat, for requests that want logprobs."""
    text: list[str] = []
    logprobs: list[oa.TokenLogprob] = []
    calls: dict[int, oa.ToolCall] = {}
    last = pb.LLMChatChunk()
    async for chunk in call:
        last = chunk
        if chunk.token:
            text.append(chunk.token)
            if chunk.HasField("signal"):
                logprobs.append(codec.logprob(chunk, req.top_logprobs or 0))
        if chunk.HasField("tool_call"):
            _merge_call(calls, chunk.tool_call)
    merged = [calls[i] for i in sorted(calls)]
    return last, "".join(text), merged, oa.Logprobs(content=logprobs, refusal=None)


def _completion(parts: list[_Choice], legacy: bool) -> oa.ChatCompletion:
    """The whole reply, from the service's replies (or streams' last chunks), one per choice.
    With `legacy` (a functions request) a call is the message's function_call."""
    choices = []
    for index, (reply, content, calls, logprobs) in enumerate(parts):
        message = oa.ChatCompletionMessage(
            role="assistant", content=content or (None if calls else ""), refusal=None
        )
        finish = codec.FINISH.get(reply.finish_reason, "stop")
        if calls and legacy:
            message.function_call = calls[0].function
            finish = "function_call"
        elif calls:  # absent, not null, when there are none
            message.tool_calls = calls
        choices.append(
            oa.ChatCompletionChoice(index=index, message=message, finish_reason=finish, logprobs=logprobs)
        )
    first = parts[0][0]
    return oa.ChatCompletion(
        id=_completion_id(),
        object="chat.completion",
        created=int(time.time()),
        model=first.model,
        choices=choices,
        usage=codec.usage(first, sum(p[0].completion_tokens for p in parts)),
        system_fingerprint=None,
    )


async def _frames(
    call: Any, first: Any, include_usage: bool, top_logprobs: int | None, legacy: bool
) -> AsyncIterator[bytes]:
    frames = _ChunkFrames(getattr(first, "model", ""), legacy)
    # The role frame goes out with the first token's, in one write.
    role = frames.choice(oa.ChoiceDelta(role="assistant", content=""))
    chunk = first
    try:
        while chunk is not grpc.aio.EOF:
            if chunk.done:
                yield role + frames.end(chunk)
                role = b""
                if include_usage:
                    yield frames.usage([chunk])
                break
            delta, logprobs = codec.delta(chunk, top_logprobs)
            if delta.model_fields_set:
                yield role + frames.choice(frames.legacy(delta), logprobs)
                role = b""
            chunk = await call.read()
        yield role + b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:  # failed midway: say so in the stream itself
        yield b"data: " + json.dumps(from_grpc(exc).body()).encode() + b"\n\n"
    finally:
        call.cancel()  # the client went away (or we are done): the service stops generating


async def _frames_of_choices(
    calls: list[Any], firsts: list[Any], include_usage: bool, top_logprobs: int | None, legacy: bool
) -> AsyncIterator[bytes]:
    """n > 1: each choice's chunks as they come, under its index; [DONE] once all have ended."""
    frames = _ChunkFrames(getattr(firsts[0], "model", ""), legacy)
    chunks: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def read(index: int, call: Any, first: Any) -> None:
        chunk = first
        try:
            while True:
                await chunks.put((index, chunk))
                if chunk is grpc.aio.EOF or chunk.done:
                    return
                chunk = await call.read()
        except grpc.aio.AioRpcError as exc:  # it ends the whole stream, with its error
            await chunks.put((-1, exc))

    readers = [asyncio.create_task(read(i, *pair)) for i, pair in enumerate(zip(calls, firsts, strict=True))]
    ends: dict[int, Any] = {}
    try:
        for i in range(len(calls)):
            yield frames.choice(oa.ChoiceDelta(role="assistant", content=""), index=i)
        while len(ends) < len(calls):
            index, chunk = await chunks.get()
            if index < 0:
                raise chunk
            if chunk is grpc.aio.EOF or chunk.done:
                ends[index] = chunk
                if chunk is not grpc.aio.EOF:
                    yield frames.end(chunk, index)
                continue
            delta, logprobs = codec.delta(chunk, top_logprobs)
            if delta.model_fields_set:
                yield frames.choice(frames.legacy(delta), logprobs, index=index)
        if include_usage:
            yield frames.usage([e for _, e in sorted(ends.items()) if e is not grpc.aio.EOF])
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:
        yield b"data: " + json.dumps(from_grpc(exc).body()).encode() + b"\n\n"
    finally:
        for reader in readers:
            reader.cancel()
        for call in calls:
            call.cancel()


class _ChunkFrames:
    """The event-stream frames of one streamed completion. Its chunks differ only in their
    choice (and the last in its usage), so the rest of a frame is written once per stream."""

    def __init__(self, model: str, legacy: bool = False) -> None:
        self._legacy = legacy
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
        index: int = 0,
    ) -> bytes:
        choice = oa.ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)
        return self._head + _event_json(choice) + self._tail

    def legacy(self, delta: oa.ChoiceDelta) -> oa.ChoiceDelta:
        """For a functions request, a tool call's pieces as function_call's."""
        if self._legacy and delta.tool_calls:
            piece = delta.tool_calls[0].function
            return oa.ChoiceDelta(function_call=piece) if delta.tool_calls[0].index == 0 else oa.ChoiceDelta()
        return delta

    def end(self, last: pb.LLMChatChunk, index: int = 0) -> bytes:
        finish = codec.FINISH.get(last.finish_reason, "stop")
        if self._legacy and finish == "tool_calls":
            finish = "function_call"
        return self.choice(oa.ChoiceDelta(), finish=finish, index=index)

    def usage(self, lasts: list[pb.LLMChatChunk]) -> bytes:
        """The usage chunk (stream_options.include_usage): no choices, the whole reply's usage."""
        usage = codec.usage(lasts[0], sum(last.completion_tokens for last in lasts))
        chunk = self._chunk.model_copy(update={"usage": usage})
        return b"data: " + _event_json(chunk) + b"\n\n"


def _event_json(reply: oa.ChatCompletionChunk | oa.ChunkChoice) -> bytes:
    """oa.dump, safe to put on one line of an event stream."""
    return line_safe(oa.dump(reply))


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
