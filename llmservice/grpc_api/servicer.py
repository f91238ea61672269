"""The LLMService servicer: decode, call the core, encode. Served as llmservice.v1 and protocol."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.protocol import llm_service_pb2_grpc as protocol_grpc
from llmservice.grpc_api import codec
from llmservice.grpc_api.call_metrics import CallMetrics
from llmservice.grpc_api.in_flight import InFlight
from llmservice.grpc_api.status import MODEL_NOT_FOUND, errors_to_status
from llmservice.kernel.context import request_trailer
from llmservice.kernel.types import ChatRequest, TokenDelta, ToolCallDelta
from llmservice.observability.metrics import ServiceMetrics
from llmservice.service.auth import AuthPolicy, Principal
from llmservice.service.core import LLMCore


class LLMServicer(pb_grpc.LLMServiceServicer, protocol_grpc.LLMServiceServicer):
    """Implements llmservice.v1.LLMService; protocol.LLMService is its Chat and StreamChat.

    A chat call's NotFound is about the model it asked for (or the provider that would
    serve it), and says so in its trailers (llm-error-kind: model_not_found).
    """

    def __init__(self, core: LLMCore, auth: AuthPolicy, metrics: ServiceMetrics | None = None) -> None:
        self._core = core
        self._auth = auth
        self.metrics = metrics or ServiceMetrics()
        self._calls = InFlight("this server is draining; retry on another replica")

    @property
    def core(self) -> LLMCore:
        """The core this servicer calls (its embedding cache's counters, for tests and metrics)."""
        return self._core

    def start_draining(self) -> None:
        """From now on, refuse new calls with UNAVAILABLE."""
        self._calls.start_draining()

    async def wait_idle(self) -> None:
        """Return once no Chat or StreamChat call is running (for draining)."""
        await self._calls.wait_idle()

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def Chat(
        self,
        request: pb.LLMChatRequest,
        context: grpc.aio.ServicerContext[pb.LLMChatRequest, pb.LLMChatResponse],
    ) -> pb.LLMChatResponse:
        call = CallMetrics(self.metrics, "Chat", context)
        with _counted(call), self._calls.track():
            principal = self._auth.authenticate(call.metadata)
            completion = await self._core.complete(_decode(request, context, principal), principal)
        call.routed(completion.provider, completion.model)
        call.ended("OK", completion.usage.completion_tokens)
        return codec.encode_completion(completion)

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def StreamChat(
        self,
        request: pb.LLMChatRequest,
        context: grpc.aio.ServicerContext[pb.LLMChatRequest, pb.LLMChatChunk],
    ) -> AsyncIterator[pb.LLMChatChunk]:
        call = CallMetrics(self.metrics, "StreamChat", context)
        context.set_trailing_metadata(request_trailer())  # unary calls get theirs from CallContext
        try:
            with _counted(call), self._calls.track():
                principal = self._auth.authenticate(call.metadata)
                stream = self._core.stream(_decode(request, context, principal), principal)
                call.routed(stream.provider, stream.model)
                # aclosing: when the caller goes away, the provider's generator is closed at once,
                # which cancels its work.
                async with contextlib.aclosing(stream.events) as events:
                    async for event in events:
                        if isinstance(event, TokenDelta):
                            if not call.first_token_s:
                                call.first_token()
                            yield codec.encode_token(event, stream.model)
                        elif isinstance(event, ToolCallDelta):
                            yield codec.encode_tool_call(event, stream.model)
                        else:
                            call.ended("OK", event.usage.completion_tokens)
                            yield codec.encode_end(event, stream.model, stream.provider)
        finally:
            call.cut()  # a caller that left (the stream closed): no effect once the call ended otherwise

    @errors_to_status()
    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        return codec.encode_models(await self._core.list_models(principal))

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def CountTokens(
        self,
        request: pb.LLMChatRequest,
        context: grpc.aio.ServicerContext[pb.LLMChatRequest, pb.CountTokensResponse],
    ) -> pb.CountTokensResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        provider, model, n = await self._core.count_tokens(_decode(request, context, principal), principal)
        return pb.CountTokensResponse(input_tokens=n, model=model, provider=provider)

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def Embed(
        self,
        request: pb.EmbedRequest,
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> pb.EmbedResponse:
        call = CallMetrics(self.metrics, "Embed", context)
        with _counted(call), self._calls.track():
            principal = self._auth.authenticate(call.metadata)
            embeddings = await self._core.embed(codec.decode_embed_request(request), principal)
        call.routed(embeddings.provider, embeddings.model)
        call.ended("OK")
        return codec.encode_embeddings(embeddings)


@contextlib.contextmanager
def _counted(call: CallMetrics) -> Iterator[None]:
    """Count a call that fails here as failed, under the status code its error is sent with;
    one cancelled here (its deadline passed, its caller left) as cut."""
    try:
        yield
    except Exception as exc:
        call.failed(exc)
        raise
    except asyncio.CancelledError:  # no Exception: grpc.aio cancels the handler's task
        call.cut()
        raise


def _decode(
    request: pb.LLMChatRequest, context: grpc.aio.ServicerContext[Any, Any], principal: Principal
) -> ChatRequest:
    """The domain request, with the call's deadline on the monotonic clock, as `principal`'s."""
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    return codec.decode_chat_request(request, deadline, principal.name)
