"""The grpc.aio server: LLMService (under both its names), health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmservice._pb.llmservice.v1 import chat_session_pb2 as session_pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as session_grpc
from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import model_admin_pb2 as admin_pb
from llmservice._pb.llmservice.v1 import model_admin_pb2_grpc as admin_grpc
from llmservice._pb.llmservice.v1 import provider_registry_pb2 as registry_pb
from llmservice._pb.llmservice.v1 import provider_registry_pb2_grpc as registry_grpc
from llmservice._pb.llmservice.v1 import response_store_pb2 as store_pb
from llmservice._pb.llmservice.v1 import response_store_pb2_grpc as store_grpc
from llmservice._pb.protocol import llm_service_pb2 as protocol_pb
from llmservice._pb.protocol import llm_service_pb2_grpc as protocol_grpc
from llmservice.grpc_api import reflection
from llmservice.grpc_api.admin_servicer import ModelAdminServicer
from llmservice.grpc_api.announcer import Announcer
from llmservice.grpc_api.health import ServiceHealth
from llmservice.grpc_api.in_process import MAX_RECEIVE, HandlerRegistry, InProcessChannel
from llmservice.grpc_api.registry_servicer import ProviderRegistryServicer
from llmservice.grpc_api.response_store_servicer import ResponseStoreServicer
from llmservice.grpc_api.servicer import LLMServicer
from llmservice.grpc_api.session_servicer import ChatSessionServicer
from llmservice.kernel.settings import SettingsError
from llmservice.observability.metrics import ServiceMetrics
from llmservice.service.auth import AuthPolicy
from llmservice.service.core import LLMCore
from llmservice.service.model_admin import ModelAdmin
from llmservice.service.registrations import Registrations
from llmservice.service.sessions import SessionManager
from llmservice.service.sessions.catalogue import ServerCatalogue
from llmservice.service.settings import LLMChatSettings
from llmservice.service.stored_responses import StoredResponses

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["LLMService"].full_name,
    protocol_pb.DESCRIPTOR.services_by_name["LLMService"].full_name,
)
SESSION_SERVICE_NAME = session_pb.DESCRIPTOR.services_by_name["ChatSessionService"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["ModelAdminService"].full_name
STORE_SERVICE_NAME = store_pb.DESCRIPTOR.services_by_name["ResponseStoreService"].full_name
REGISTRY_SERVICE_NAME = registry_pb.DESCRIPTOR.services_by_name["ProviderRegistryService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: ServiceHealth
    servicer: LLMServicer
    metrics_port: int = -1  # Prometheus /metrics, once served (-1: off)
    tracing: Any = None  # the instance's observability.tracing.Tracing when tracing is on
    handlers: HandlerRegistry = field(default_factory=HandlerRegistry)  # for in-process calls
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
    sessions: ChatSessionServicer | None = None  # ChatSessionService's, when served: its turns drain too
    max_message_bytes: int = MAX_RECEIVE
    auth: AuthPolicy | None = None  # the policy its servicers apply (the shim's gate checks keys with it)
    announcer: Announcer | None = None  # registering this service with a gateway (announce.*)
    _channels: weakref.WeakSet[InProcessChannel] = field(default_factory=weakref.WeakSet)
    _drained: bool = False

    def in_process_channel(self) -> InProcessChannel:
        """A channel to this server's services that skips the sockets (the shim's, in `serve`)."""
        channel = InProcessChannel(self.handlers, self.interceptors, self.max_message_bytes)
        self._channels.add(channel)
        return channel

    async def set_serving(self, serving: bool) -> None:
        """Health for the whole server ("") and for each LLMService name."""
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def drain(self, grace_s: float) -> None:
        """Deregister from the gateway announced to, report NOT_SERVING, refuse new calls,
        give in-flight LLM calls and session turns `grace_s` to finish.

        New Chat and StreamChat calls (of LLMService and of ChatSessionService) get
        UNAVAILABLE (retry elsewhere) from the servicers themselves, so the answer does
        not depend on where in grpc's own shutdown a call lands. Session turns still
        running when the grace is up are cut by the session manager, which keeps their
        history consistent (no tool call without its result), and get a moment to say so
        (UNAVAILABLE) before the calls are cut. Calls that never end by themselves
        (health watches) are cut as soon as the rest are done, rather than holding the
        process for the whole grace period.
        """
        if self._drained:  # `serve` drains as SIGTERM comes; the lifespan's own drain is then done
            return
        if self.announcer is not None:  # a gateway sending work here stops first
            await self.announcer.stop()
        sessions = self.sessions
        self.servicer.start_draining()
        if sessions is not None:
            sessions.start_draining()
        await self.set_serving(False)
        idle = [self.servicer.wait_idle(), *([sessions.wait_idle()] if sessions is not None else [])]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*idle), grace_s)
        if sessions is not None:
            await sessions.cut_turns()
        for (
            channel
        ) in self._channels:  # what the shim still has in flight in process ends as over the network
            channel.cut("the service is shutting down: retry on another replica")
        await self.server.stop(0)
        self._drained = True


def _listen(server: grpc.aio.Server, address: str) -> int:
    """The port bound; SettingsError when the address cannot be listened on (in use, say)."""
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind to address"
        bound = 0
    if bound == 0:
        raise SettingsError(f"cannot listen on {address}: in use, or not an address of this machine")
    return bound


async def start_server(
    core: LLMCore,
    host: str,
    port: int,
    auth: AuthPolicy | None = None,
    sessions: SessionManager | None = None,
    catalogue: ServerCatalogue | None = None,
    admin: ModelAdmin | None = None,
    metrics: ServiceMetrics | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    responses: StoredResponses | None = None,
    max_message_bytes: int = MAX_RECEIVE,
    registrations: Registrations | None = None,
    reuse_port: bool = False,
    private_address: str = "",
) -> GrpcServer:
    """Start serving on host:port (0 picks a free port); health says NOT_SERVING until set_serving.
    `max_message_bytes`: the largest request message taken (server.max_body_mb). `reuse_port`:
    share the port with other processes (workers); otherwise a port in use is an error.
    `private_address`: a second address to serve on (the engine worker's unix: socket)."""
    server = grpc.aio.server(
        interceptors=list(interceptors) or None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            # grpc shares ports by default on Linux: a second service started on the same
            # port would take half the connections instead of failing to start
            ("grpc.so_reuseport", int(reuse_port)),
        ],
    )
    handlers = HandlerRegistry()  # the same services, for in-process callers
    auth = auth or AuthPolicy({})
    servicer = LLMServicer(core, auth, metrics)
    names: tuple[str, ...] = SERVICE_NAMES
    session_servicer = admin_servicer = None
    if sessions is not None:
        session_servicer = ChatSessionServicer(
            sessions, auth, catalogue or ServerCatalogue(LLMChatSettings())
        )
        names = (*names, SESSION_SERVICE_NAME)
    if admin is not None:
        admin_servicer = ModelAdminServicer(admin, auth)
        names = (*names, ADMIN_SERVICE_NAME)
    store_servicer = ResponseStoreServicer(responses, auth) if responses is not None else None
    if store_servicer is not None:
        names = (*names, STORE_SERVICE_NAME)
    registry_servicer = ProviderRegistryServicer(registrations, auth) if registrations is not None else None
    if registry_servicer is not None:
        names = (*names, REGISTRY_SERVICE_NAME)
    # The registry has the two methods the generated add_* functions call on a server.
    for target in (server, cast(grpc.aio.Server, handlers)):
        pb_grpc.add_LLMServiceServicer_to_server(servicer, target)
        protocol_grpc.add_LLMServiceServicer_to_server(servicer, target)
        if session_servicer is not None:
            session_grpc.add_ChatSessionServiceServicer_to_server(session_servicer, target)
        if admin_servicer is not None:
            admin_grpc.add_ModelAdminServiceServicer_to_server(admin_servicer, target)
        if store_servicer is not None:
            store_grpc.add_ResponseStoreServiceServicer_to_server(store_servicer, target)
        if registry_servicer is not None:
            registry_grpc.add_ProviderRegistryServiceServicer_to_server(registry_servicer, target)
    health = ServiceHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_pb2_grpc.add_HealthServicer_to_server(
        health, cast(grpc.aio.Server, handlers)
    )  # the shim's /health
    reflection.enable((*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    bound = _listen(server, f"{host}:{port}")
    if private_address:
        _listen(server, private_address)
    await server.start()
    result = GrpcServer(
        server,
        bound,
        health,
        servicer,
        handlers=handlers,
        interceptors=tuple(interceptors),
        max_message_bytes=max_message_bytes,
    )
    result.sessions = session_servicer
    await result.set_serving(False)
    return result
