"""The in-process channel behaves as a gRPC hop does: statuses, trailers, deadlines, cancels, isolation."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from llmservice._pb.llmservice.v1 import chat_session_pb2 as session_pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as session_grpc
from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.grpc_api.in_process import HandlerRegistry, InProcessChannel

CALLER_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("caller_var", default="unset")


class Servicer(pb_grpc.LLMServiceServicer):
    def __init__(self) -> None:
        self.stream_closed = asyncio.Event()
        self.seen: list[Any] = []

    async def Chat(self, request: pb.LLMChatRequest, context: Any) -> pb.LLMChatResponse:
        text = request.messages[0].content
        self.seen.append(request)
        if text == "abort":
            context.set_trailing_metadata((("llm-error-kind", "model_not_found"),))
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        if text == "crash":
            raise RuntimeError("boom")
        if text == "slow":
            await asyncio.sleep(30)
        if text == "huge":
            return pb.LLMChatResponse(content="x" * (5 * 1024 * 1024))
        metadata = dict(context.invocation_metadata())
        remaining = context.time_remaining()
        return pb.LLMChatResponse(
            content=f"{metadata.get('x-caller', '')}|{CALLER_VAR.get()}|{remaining is not None}",
            model=request.model,
        )

    async def StreamChat(self, request: pb.LLMChatRequest, context: Any) -> AsyncIterator[pb.LLMChatChunk]:
        text = request.messages[0].content
        try:
            for i in range(3):
                yield pb.LLMChatChunk(token=f"t{i}")
            if text == "fail":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream went away")
            if text == "endless":
                while True:
                    await asyncio.sleep(0.01)
                    yield pb.LLMChatChunk(token="more")
            yield pb.LLMChatChunk(done=True)
        finally:
            self.stream_closed.set()


class Recorder(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.methods.append(details.method)
        return await continuation(details)


@pytest.fixture
def parts() -> tuple[Any, Servicer, Recorder, InProcessChannel]:
    registry, servicer, recorder = HandlerRegistry(), Servicer(), Recorder()  # type: ignore[abstract]
    pb_grpc.add_LLMServiceServicer_to_server(servicer, cast(grpc.aio.Server, registry))
    channel = InProcessChannel(registry, [recorder])
    stub = pb_grpc.LLMServiceStub(cast(grpc.aio.Channel, channel))
    return stub, servicer, recorder, channel


def chat(text: str, model: str = "m") -> pb.LLMChatRequest:
    return pb.LLMChatRequest(model=model, messages=[pb.ChatMessage(role="user", content=text)])


async def test_a_unary_call_passes_metadata_and_deadline_but_no_context_and_runs_interceptors(
    parts: Any,
) -> None:
    stub, servicer, recorder, _ = parts
    CALLER_VAR.set("the shim's")
    request = chat("hi")
    reply = await stub.Chat(request, metadata=(("X-Caller", "shim"),), timeout=5)
    assert reply.content == "shim|unset|True"  # keys lower-cased; the caller's contextvars stay behind
    assert reply.model == "m"
    assert servicer.seen[0] is not request  # parsed again, not shared
    assert servicer.seen[0] == request
    assert recorder.methods == ["/llmservice.v1.LLMService/Chat"]
    plain = await stub.Chat(chat("hi"))
    assert plain.content.endswith("|False")  # no timeout, no deadline


async def test_an_abort_is_an_rpc_error_with_the_handlers_trailers(parts: Any) -> None:
    stub = parts[0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat("abort"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such model"
    assert ("llm-error-kind", "model_not_found") in list(caught.value.trailing_metadata())


async def test_an_unexpected_exception_is_unknown(parts: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parts[0].Chat(chat("crash"))
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert "boom" in (caught.value.details() or "")


async def test_a_deadline_cuts_the_call(parts: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await parts[0].Chat(chat("slow"), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_unknown_method_is_unimplemented(parts: Any) -> None:
    channel = parts[3]
    sessions = cast(Any, session_grpc.ChatSessionServiceStub(cast(grpc.aio.Channel, channel)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions.GetStatus(session_pb.GetStatusRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_stream_reads_to_eof_and_iterates(parts: Any) -> None:
    stub = parts[0]
    call = stub.StreamChat(chat("hi"))
    first = await call.read()
    assert first.token == "t0"
    rest = [c async for c in call]
    assert [c.token for c in rest] == ["t1", "t2", ""]
    assert rest[-1].done
    assert await call.read() is grpc.aio.EOF


async def test_a_stream_that_fails_midway_raises_after_its_chunks(parts: Any) -> None:
    call = parts[0].StreamChat(chat("fail"))
    tokens: list[str] = []

    async def read_all() -> None:
        async for chunk in call:
            tokens.append(chunk.token)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all()
    assert tokens == ["t0", "t1", "t2"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "upstream went away"


async def test_cancel_stops_the_handler_and_wakes_a_waiting_read(parts: Any) -> None:
    stub, servicer = parts[0], parts[1]
    call = stub.StreamChat(chat("endless"))
    assert (await call.read()).token == "t0"
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    await asyncio.wait_for(servicer.stream_closed.wait(), 5)  # the handler's generator was closed
    assert call.cancelled()


async def test_cancelling_the_awaiting_task_cancels_the_unary_handler(parts: Any) -> None:
    stub = parts[0]
    call = stub.Chat(chat("slow"))
    waiter = asyncio.ensure_future(call)
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert call.cancelled()


async def test_a_reader_that_lags_holds_back_the_handler(parts: Any) -> None:
    """At most STREAM_BUFFER unread replies: a slow HTTP client slows the generation, as flow control does."""
    from llmservice.grpc_api import in_process

    stub, servicer = parts[0], parts[1]
    call = stub.StreamChat(chat("endless"))
    await asyncio.sleep(in_process.STREAM_BUFFER * 0.01 + 0.5)
    assert not servicer.stream_closed.is_set()
    assert call._rpc.replies.qsize() == in_process.STREAM_BUFFER
    call.cancel()
    await asyncio.wait_for(servicer.stream_closed.wait(), 5)


async def test_a_message_over_grpcs_receive_limit_fails_as_on_the_network(parts: Any) -> None:
    """4 MiB, the default both the server and the shim's channel keep: RESOURCE_EXHAUSTED either way."""
    stub = parts[0]
    with pytest.raises(grpc.aio.AioRpcError) as reply_too_big:
        await stub.Chat(chat("huge"))
    with pytest.raises(grpc.aio.AioRpcError) as request_too_big:
        await stub.Chat(chat("x" * (5 * 1024 * 1024)))
    for caught in (reply_too_big, request_too_big):
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (caught.value.details() or "")


async def test_a_request_limit_of_its_own_is_kept(parts: Any) -> None:
    registry, servicer = HandlerRegistry(), Servicer()  # type: ignore[abstract]
    pb_grpc.add_LLMServiceServicer_to_server(servicer, cast(grpc.aio.Server, registry))
    stub = pb_grpc.LLMServiceStub(cast(grpc.aio.Channel, InProcessChannel(registry, max_request_bytes=1000)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Chat(chat("x" * 2000))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.Chat(chat("x" * 500))).content


async def test_cut_ends_running_calls_with_unavailable_after_what_was_sent(parts: Any) -> None:
    stub, servicer, _, channel = parts
    stream = stub.StreamChat(chat("endless"))
    unary = asyncio.ensure_future(stub.Chat(chat("slow")))
    assert (await stream.read()).token == "t0"
    channel.cut("the service is shutting down")
    with pytest.raises(grpc.aio.AioRpcError) as cut_unary:
        await unary
    tokens: list[str] = []

    async def read_all() -> None:
        while True:
            tokens.append((await stream.read()).token)

    with pytest.raises(grpc.aio.AioRpcError) as cut_stream:
        await read_all()
    for cut in (cut_unary, cut_stream):
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cut.value.details() == "the service is shutting down"
    assert tokens[:2] == ["t1", "t2"]  # what was sent before the cut is read first
    await asyncio.wait_for(servicer.stream_closed.wait(), 5)
    assert not channel._calls
