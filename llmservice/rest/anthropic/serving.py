"""Messages and token counts over LLMService: decode, call the service, encode.

A stream is answered only once its first chunk has come back, so an unknown model or
a bad key is an ordinary HTTP error, never a stream that fails at byte zero. Its events
are Anthropic's, in Anthropic's order: message_start, then each content block's
content_block_start, content_block_delta (text_delta, or input_json_delta for a
tool_use) and content_block_stop, then message_delta (stop reason, usage) and
message_stop. The service counts the prompt only at the end of a stream, so the usage
of message_start is zeros and message_delta's is the whole message's, input counts
included (Anthropic's message_delta usage is cumulative, and its SDK reads it so). A
stream that fails later ends with an `error` event in Anthropic's error shape. When the
client goes away, whether the reply is whole, streamed, or still waiting in the queue,
the gRPC call is cancelled: generation stops and the request leaves the queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi.responses import Response, StreamingResponse
from starlette.requests import Request

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.rest.anthropic import codec
from llmservice.rest.anthropic import protocol as an
from llmservice.rest.anthropic.errors import AnthropicError, as_anthropic
from llmservice.rest.disconnect import cancelled_on_disconnect
from llmservice.rest.event_stream import line_safe

Metadata = tuple[tuple[str, str], ...]


class AnthropicServing:
    def __init__(self, stub: pb_grpc.LLMServiceAsyncStub) -> None:
        self._stub = stub

    async def messages(self, req: an.MessageCreateRequest, request: Request, metadata: Metadata) -> Response:
        msg = codec.to_grpc(req)
        if req.stream:
            return await self._stream(msg, request, metadata)
        call = self._stub.Chat(msg, metadata=metadata)
        async with cancelled_on_disconnect(request, call):
            reply = await call
        return _json(codec.message(reply))

    async def _stream(self, msg: pb.LLMChatRequest, request: Request, metadata: Metadata) -> Response:
        call = self._stub.StreamChat(msg, metadata=metadata)
        async with cancelled_on_disconnect(request, call):  # it may wait in the queue
            first = await call.read()
        return StreamingResponse(
            _events(call, first), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def count_tokens(
        self, req: an.CountTokensRequest, request: Request, metadata: Metadata
    ) -> Response:
        call = self._stub.CountTokens(codec.prompt(req), metadata=metadata)
        async with cancelled_on_disconnect(request, call):
            reply = await call
        return _json(an.MessageTokensCount(input_tokens=reply.input_tokens))


async def _events(call: Any, first: Any) -> AsyncIterator[bytes]:
    blocks = _Blocks()
    # message_start goes out with the first block's events, in one write.
    out = [_message_start(getattr(first, "model", ""))]
    chunk = first
    try:
        while True:
            if chunk is grpc.aio.EOF:
                raise AnthropicError(500, "api_error", "the service ended the stream before it finished")
            if chunk.done:
                out += blocks.close()
                delta = an.MessageDelta(
                    stop_reason=codec.STOP.get(chunk.finish_reason, "end_turn"), stop_sequence=None
                )
                out.append(
                    _event(an.MessageDeltaEvent(type="message_delta", delta=delta, usage=codec.usage(chunk)))
                )
                out.append(_event(an.MessageStopEvent(type="message_stop")))
                yield b"".join(out)
                return
            if chunk.token:
                out += blocks.text(chunk.token)
            if chunk.HasField("tool_call"):
                out += blocks.tool_call(chunk.tool_call)
            if out:
                yield b"".join(out)
                out = []
            chunk = await call.read()
    except (grpc.aio.AioRpcError, AnthropicError) as exc:  # failed midway: say so in the stream itself
        error = as_anthropic(exc)
        assert error is not None
        yield b"".join(out) + b"event: error\ndata: " + line_safe(an.dump(error.body())) + b"\n\n"
    finally:
        call.cancel()  # the client went away (or we are done): the service stops generating


class _Blocks:
    """The content blocks of a streamed message: text and tool calls, one block open at a time.
    A tool call's later pieces go to its own block, whichever is open."""

    def __init__(self) -> None:
        self._count = 0
        self._open: int | None = None  # the index of the open block
        self._text_open = False
        self._calls: dict[int, int] = {}  # the service's tool call index -> its block's index

    def text(self, token: str) -> list[bytes]:
        out = []
        if not self._text_open:
            out = self._start(an.TextBlock(type="text", text=""))
            self._text_open = True
        out.append(self._delta(an.TextDelta(type="text_delta", text=token)))
        return out

    def tool_call(self, piece: pb.ToolCallDelta) -> list[bytes]:
        out = []
        if piece.index not in self._calls:
            call_id = piece.id or codec.tool_use_id()
            out = self._start(an.ToolUseBlock(type="tool_use", id=call_id, name=piece.name, input={}))
            self._calls[piece.index] = self._count - 1
        if piece.arguments_json:
            delta = an.InputJSONDelta(type="input_json_delta", partial_json=piece.arguments_json)
            out.append(self._delta(delta, self._calls[piece.index]))
        return out

    def close(self) -> list[bytes]:
        if self._open is None:
            return []
        stop = an.ContentBlockStopEvent(type="content_block_stop", index=self._open)
        self._open, self._text_open = None, False
        return [_event(stop)]

    def _start(self, block: an.TextBlock | an.ToolUseBlock) -> list[bytes]:
        out = self.close()
        self._open, self._count = self._count, self._count + 1
        start = an.ContentBlockStartEvent(type="content_block_start", index=self._open, content_block=block)
        return [*out, _event(start)]

    def _delta(self, delta: an.TextDelta | an.InputJSONDelta, index: int | None = None) -> bytes:
        index = self._open if index is None else index
        assert index is not None
        return _event(an.ContentBlockDeltaEvent(type="content_block_delta", index=index, delta=delta))


def _message_start(model: str) -> bytes:
    message = an.Message(
        id=codec.message_id(),
        type="message",
        role="assistant",
        content=[],
        model=model,
        stop_reason=None,
        stop_sequence=None,
        usage=an.MessageUsage(
            input_tokens=0, output_tokens=0, cache_creation_input_tokens=0, cache_read_input_tokens=0
        ),
    )
    return _event(an.MessageStartEvent(type="message_start", message=message))


def _event(event: an.StreamEvent) -> bytes:
    return b"event: " + event.type.encode() + b"\ndata: " + line_safe(an.dump(event)) + b"\n\n"


def _json(reply: an.Message | an.MessageTokensCount) -> Response:
    return Response(an.dump(reply), media_type="application/json")
