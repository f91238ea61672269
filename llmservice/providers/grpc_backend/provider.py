"""The `grpc` provider: forwards to another service that speaks `llmservice.v1.LLMService`
(a second llmservice: a GPU replica behind a CPU gateway) or the published plugin
contract `protocol.LLMService` (Chat and StreamChat only).

Nothing is lost on the way: the request goes as the same protobuf the caller could have
sent (priority, signal options, tools, constraint), the reply's chunks come back with
their token signals, and the caller's deadline travels as the call's gRPC deadline. The
backend's status codes come back as the same domain errors (so a route fails over as
for any provider); closing the stream cancels the backend's call. Retries are
`providers.remote.retry`'s: before the first event only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.kernel.embedding import EmbedRequest, EmbedResult
from llmservice.kernel.errors import InvalidRequest, LLMServiceError, ProviderTimeout, Unavailable
from llmservice.kernel.redact import redact
from llmservice.kernel.types import ChatRequest, Completion, ModelInfo, StreamEvent
from llmservice.providers.grpc_backend import codec
from llmservice.providers.grpc_backend.settings import GrpcBackendSettings
from llmservice.providers.remote.base import RemoteProvider
from llmservice.providers.remote.retry import call_with_retries

log = logging.getLogger(__name__)

V1 = "llmservice.v1.LLMService"
PROTOCOL = "protocol.LLMService"
_T = TypeVar("_T")
# Connectivity states that say whether the backend can be reached (CONNECTING says nothing yet).
_UP = {
    grpc.ChannelConnectivity.READY: True,
    grpc.ChannelConnectivity.IDLE: True,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: False,
    grpc.ChannelConnectivity.SHUTDOWN: False,
}


@dataclass(frozen=True, slots=True)
class _Call:
    """What one forwarded chat call sends: the message, and the caller's deadline (its timeout)."""

    message: pb.LLMChatRequest
    deadline: float | None


class GrpcBackend(RemoteProvider):
    raw_prompts = True  # the backend decides: what it cannot do, it refuses in its own words
    strict_tools = True
    one_call_switch = True  # parallel_tool_calls travels in the request: the backend honours it

    def __init__(self, settings: GrpcBackendSettings, name: str = "grpc") -> None:
        super().__init__(name, settings)
        self._settings = settings
        self._key = settings.api_key.get_secret_value() if settings.api_key else ""
        self._metadata = (("authorization", f"Bearer {self._key}"),) if self._key else ()
        self._channel: grpc.aio.Channel | None = None
        self.service = "" if settings.service == "auto" else f"{settings.service}.LLMService"
        self._default = settings.model or (settings.models[0] if settings.models else "")
        self._watching: asyncio.Task[None] | None = None
        self._reachable: bool | None = None  # None until its connection is first tried

    @property
    def default_model(self) -> str:
        return self._default

    async def start(self) -> None:
        """Open the channel and learn what the backend speaks. A backend that is down now,
        with its model configured, does not stop this service starting: it is asked as
        ours, and its calls fail (and routes fail over) until it is back."""
        self._channel = self._open_channel()
        if not self._settings.start_when_down:
            await self._reached()
        if not self.service:
            try:
                self.service = await self._detect()
            except (Unavailable, ProviderTimeout) as exc:
                if not self._default:
                    raise
                log.warning("provider %s: %s; asking it as %s once it is back", self.name, exc.message, V1)
                self.service = V1
        if not self._default and self.service == V1:
            listed = await self._list()
            if not listed:
                raise Unavailable(f"provider {self.name} lists no models; set its model")
            self._default = listed[0].id
        log.info("provider %s: %s at %s", self.name, self.service, self._settings.target)
        self._watching = asyncio.create_task(self._watch(), name=f"health of provider {self.name}")

    async def _reached(self) -> None:
        """Return once the channel is connected; Unavailable after connect_timeout_s."""
        timeout = self._settings.connect_timeout_s
        try:
            await asyncio.wait_for(self._ready().channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(
                f"provider {self.name}: nothing answered at {self._settings.target} within {timeout:g}s"
            ) from None

    def health(self) -> bool | None:
        """Whether its connection is up (READY or IDLE) now; None before it was tried."""
        return self._reachable

    async def aclose(self) -> None:
        """Close the channel once the calls in flight end (within timeout_s, the longest a
        call may take; none are left when the service stops, it drained them)."""
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(grace=self._settings.timeout_s)

    async def _watch(self) -> None:
        """Keep `health()` current: the channel is kept connecting (a dead backend is seen
        within the reconnect backoff, 2 s, not at the next call) and each change noted."""
        channel = self._ready()
        while True:
            state = channel.get_state(try_to_connect=True)
            up = _UP.get(state)
            if up is not None and up != self._reachable:
                if up:
                    log.info("provider %s: connected to %s", self.name, self._settings.target)
                elif self._reachable is not None:
                    log.warning("provider %s: lost its connection to %s", self.name, self._settings.target)
                self._reachable = up
            await channel.wait_for_state_change(state)

    async def list_models(self) -> list[ModelInfo]:
        announced = self._settings.models
        if self.service != V1:  # the plugin contract has no ListModels: the configured models
            return [ModelInfo(m, self.name) for m in announced or [self._default]]
        with self._redacted():
            listed = await self._list()
        return [m for m in listed if m.id in announced] if announced else listed

    def validate(self, model: str, request: ChatRequest) -> None:
        """Nothing here: the backend validates, and its INVALID_ARGUMENT comes back as it is."""

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    def _stream_body(self, model: str, request: ChatRequest) -> _Call:
        return _Call(
            codec.encode_chat_request(model, request, self._settings.backend_provider), request.deadline
        )

    _complete_body = _stream_body

    async def _call(self, body: _Call, model: str) -> Completion:
        reply = await self._unary("Chat", body.message, pb.LLMChatResponse, body.deadline)
        return codec.decode_chat_response(reply, self.name)

    async def count_tokens(self, model: str, request: ChatRequest) -> int:
        self._v1_only("counting tokens")
        message = codec.encode_chat_request(model, request, self._settings.backend_provider)
        with self._redacted():
            reply = await self._unary("CountTokens", message, pb.CountTokensResponse, request.deadline)
        return int(reply.input_tokens)

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        self._v1_only("embeddings")
        message = codec.encode_embed_request(model, request, self._settings.backend_provider)
        with self._redacted():
            async with self.scheduler.slot(0, None):
                reply = await call_with_retries(
                    lambda: self._unary("Embed", message, pb.EmbedResponse, None), self.retry
                )
        return codec.decode_embed_response(reply)

    async def _open_stream(self, body: _Call, model: str) -> AsyncIterator[StreamEvent]:
        call = self._ready().unary_stream(
            f"/{self.service}/StreamChat",
            request_serializer=pb.LLMChatRequest.SerializeToString,
            response_deserializer=pb.LLMChatChunk.FromString,
        )(body.message, timeout=self._timeout(body.deadline), metadata=self._metadata)
        try:
            async for chunk in call:
                for event in codec.decode_chunk(chunk, self.name):
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()  # the caller left (or the stream ended): the backend stops generating

    async def _unary(self, method: str, message: Any, reply_type: type[_T], deadline: float | None) -> _T:
        call: Callable[..., Awaitable[_T]] = self._ready().unary_unary(
            f"/{self.service}/{method}",
            request_serializer=type(message).SerializeToString,
            response_deserializer=reply_type.FromString,  # type: ignore[attr-defined]
        )
        try:
            return await call(message, timeout=self._timeout(deadline), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    async def _list(self) -> list[ModelInfo]:
        reply = await self._unary("ListModels", pb.ListModelsRequest(), pb.ListModelsResponse, None)
        return codec.decode_models(reply, self.name, only=self._settings.backend_provider)

    async def _detect(self) -> str:
        """The service the backend speaks, from its reflection: ours if it has it, else the
        plugin contract's; a backend without reflection is asked as ours."""
        stub = reflection_pb2_grpc.ServerReflectionStub(self._ready())
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            async for reply in stub.ServerReflectionInfo(
                iter([request]), timeout=self._settings.connect_timeout_s, metadata=self._metadata
            ):
                names = {s.name for s in reply.list_services_response.service}
                if V1 in names or PROTOCOL not in names:
                    return V1
                return PROTOCOL
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise self._error(exc) from None
            log.info(
                "provider %s: no reflection at %s (%s): asking it as %s",
                self.name,
                self._settings.target,
                exc.code().name,
                V1,
            )
        return V1

    def _timeout(self, deadline: float | None) -> float:
        """The call's gRPC timeout: the caller's deadline, at most the provider's timeout_s."""
        if deadline is None:
            return self._settings.timeout_s
        return max(min(deadline - time.monotonic(), self._settings.timeout_s), 0.001)

    def _error(self, exc: grpc.aio.AioRpcError) -> LLMServiceError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
            detail = redact(exc.details() or "", [self._key])
            return Unavailable(f"provider {self.name} is unreachable at {self._settings.target}: {detail}")
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self._connect_timed_out():
            return ProviderTimeout(f"provider {self.name} did not accept a connection in time")
        return codec.error_from_status(
            self.name, exc.code(), exc.details() or "", exc.trailing_metadata() or ()
        )

    def _connect_timed_out(self) -> bool:
        channel = self._channel
        return channel is not None and channel.get_state() != grpc.ChannelConnectivity.READY

    def _v1_only(self, what: str) -> None:
        if self.service != V1:
            raise InvalidRequest("model", f"provider {self.name} speaks {PROTOCOL}, which has no {what}")

    def _open_channel(self) -> grpc.aio.Channel:
        s = self._settings
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),  # retries are ours: before the first event only
            # A backend back from a restart is reconnected to within two seconds, not gRPC's
            # default backoff of up to two minutes; calls meanwhile fail at once (UNAVAILABLE).
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if not s.tls:
            return grpc.aio.insecure_channel(s.target, options=options)
        roots = s.ca_file.read_bytes() if s.ca_file else None
        return grpc.aio.secure_channel(s.target, grpc.ssl_channel_credentials(roots), options=options)

    def _ready(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        return self._channel
