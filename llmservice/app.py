"""The application's lifespan: providers, core and gRPC server, started and drained together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from pydantic import SecretStr

from llmservice.grpc_api import GrpcServer, start_server
from llmservice.grpc_api.announcer import Announcer
from llmservice.grpc_api.health import watch_providers
from llmservice.grpc_api.private_services import PrivateServices
from llmservice.grpc_api.request_context import CallContext
from llmservice.kernel.errors import Unauthenticated
from llmservice.kernel.provider import Provider
from llmservice.kernel.scheduler import Scheduler
from llmservice.kernel.settings import SettingsError
from llmservice.observability import tracing_for
from llmservice.observability.metrics import (
    CountersCollector,
    SchedulerCollector,
    ServiceMetrics,
    provider_readings,
    served,
)
from llmservice.providers.grpc_backend import GrpcBackendSettings
from llmservice.providers.grpc_backend import build as grpc_backend
from llmservice.rest.gate import GatePolicy
from llmservice.service.auth import AuthPolicy
from llmservice.service.core import LLMCore
from llmservice.service.embed_cache import FILE_NAME as CACHE_FILE
from llmservice.service.embed_cache import EmbeddingCache
from llmservice.service.limits import Limits
from llmservice.service.model_admin import ModelAdmin
from llmservice.service.registrations import Announcement, Registrations
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions import SessionManager
from llmservice.service.sessions.catalogue import ServerCatalogue
from llmservice.service.settings import Settings
from llmservice.service.stored_responses import StoredResponses
from llmservice.workers import WorkerRole

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing

log = logging.getLogger(__name__)

WORKERS_PRINCIPAL = "_workers"  # the other workers, calling the engine worker (server.workers)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings,
    on_listening: Callable[[int], None] | None = None,
    registry: ProviderRegistry | None = None,
    tracing: Tracing | None = None,
    worker: WorkerRole | None = None,
) -> AsyncIterator[GrpcServer]:
    """Serve until the block ends, then drain in-flight calls within the grace period.

    The port is open (health NOT_SERVING) while providers start; SERVING follows once
    the default model is loaded. `tracing` (tests: one with an in-memory exporter)
    replaces what settings.tracing says. `worker`: this process is one of several
    sharing the ports (llmservice.workers).
    """
    own_tracing = tracing is None
    tracing = tracing or tracing_for(settings.tracing)
    forwarder = engine_forwarder(worker) if worker is not None and worker.forwards_engine else None
    registry = registry or ProviderRegistry.from_settings(settings, stand_in=forwarder)
    auth = AuthPolicy.from_settings(settings.auth)
    if worker is not None and worker.runs_engine:
        auth = auth.admitting(WORKERS_PRINCIPAL, worker.key)
    if auth.open:
        log.warning("no API keys configured: open local mode, every caller may use every model")
    e = settings.embeddings
    embed_cache = EmbeddingCache(e.cache_dir / CACHE_FILE) if e.cache else None
    limits = Limits.from_settings(settings)
    core = LLMCore(registry, embed_cache, e.max_inputs, limits)
    sessions = SessionManager(
        core, settings.llmchat, settings.cache, tracing=tracing, sections=settings.section
    )
    catalogue = ServerCatalogue(settings.llmchat)
    responses = StoredResponses(settings.responses, settings.cache)
    metrics = service_metrics(registry, sessions, embed_cache)
    registrations = (
        Registrations(registry, settings.registry, registered_backend) if settings.registry.enabled else None
    )
    server = await start_server(
        core,
        settings.server.host,
        settings.server.grpc_port,
        auth,
        sessions,
        catalogue,
        ModelAdmin(registry),
        metrics,
        [PrivateServices(auth, settings.auth.public), CallContext(tracing, payloads=settings.logs.payloads)],
        responses,
        max_message_bytes=body_limit(settings),
        registrations=registrations,
        reuse_port=worker is not None,
        private_address=worker.engine if worker is not None and worker.runs_engine else "",
    )
    server.auth = auth
    server.tracing = tracing
    # a worker's metrics are read by the supervisor, which serves them all on the metrics port
    metrics_host = "127.0.0.1" if worker is not None else settings.server.host
    if on_listening:
        on_listening(server.port)
    try:
        async with (
            registry,
            registrations or contextlib.nullcontext(),
            sessions,
            responses,
            limits,
            embed_cache or contextlib.nullcontext(),
            metrics_served(metrics, metrics_host, settings.server.metrics_port) as metrics_port,
        ):
            server.metrics_port = metrics_port
            await server.set_serving(True)
            health = asyncio.create_task(
                watch_providers(server.health, registry.named, registry.changed), name="provider health"
            )
            if settings.announce.to and (worker is None or worker.index == 0):  # drain() deregisters it first
                server.announcer = Announcer(settings.announce, announced_target(settings, server.port))
                await server.announcer.start()
            try:
                yield server
                await server.drain(settings.server.drain_grace_s)
            finally:
                health.cancel()
                if server.announcer is not None:
                    await server.announcer.stop()
    finally:
        await server.server.stop(None)
        if tracing is not None and own_tracing:
            tracing.shutdown()


def registered_backend(announced: Announcement, connect_timeout_s: float) -> Provider:
    """What a registration becomes: a `grpc` provider in front of the announced target, which
    must answer now (a registration is refused, not kept, while it cannot be reached)."""
    settings = GrpcBackendSettings(
        target=announced.target,
        tls=announced.tls,
        api_key=SecretStr(announced.api_key) if announced.api_key else None,
        service=announced.service or "auto",  # vetted by Registrations
        models=list(announced.models),
        connect_timeout_s=connect_timeout_s,
        start_when_down=False,
    )
    return grpc_backend(settings, announced.name)


def engine_forwarder(worker: WorkerRole) -> Callable[[str], Provider]:
    """What stands in for the local engine in a worker that does not run it: a `grpc` provider
    in front of the engine worker's private socket, under the local provider's name."""

    def forwarding(kind: str) -> Provider:
        settings = GrpcBackendSettings(
            target=worker.engine, api_key=SecretStr(worker.key), service="llmservice.v1"
        )
        return grpc_backend(settings, kind)

    return forwarding


def service_metrics(
    registry: ProviderRegistry, sessions: SessionManager, embed_cache: EmbeddingCache | None
) -> ServiceMetrics:
    """The service's metrics, with collectors over what its parts count by themselves."""
    metrics = ServiceMetrics()
    metrics.watch(SchedulerCollector(lambda: _schedulers(registry)))

    def readings() -> Iterator[tuple[str, str, dict[str, str], float]]:
        yield from provider_readings(registry.providers())
        yield (
            "llmservice_chat_sessions_active",
            "Chat sessions this worker holds a connection for",
            {},
            sessions.active,
        )
        for outcome, n in sessions.tool_calls.items():
            yield "llmservice_mcp_tool_calls_total", "MCP tool calls by outcome", {"outcome": outcome}, n
        if embed_cache is not None:
            doc = "Embedding inputs looked up in the cache, by result"
            yield "llmservice_embedding_cache_lookups_total", doc, {"result": "hit"}, embed_cache.hits
            yield "llmservice_embedding_cache_lookups_total", doc, {"result": "miss"}, embed_cache.misses

    metrics.watch(CountersCollector(readings))
    return metrics


def _schedulers(registry: ProviderRegistry) -> Iterator[tuple[str, Scheduler]]:
    for name, provider in registry.providers():
        if provider.scheduler is not None:
            yield name, provider.scheduler


@contextlib.asynccontextmanager
async def metrics_served(metrics: ServiceMetrics, host: str, port: int) -> AsyncIterator[int]:
    """Prometheus's /metrics on host:port (0: a free port) for the block; yields the port (-1: off)."""
    with served(metrics.registry, host, port) as bound:
        yield bound


def body_limit(settings: Settings) -> int:
    return int(settings.server.max_body_mb * (1 << 20))


def shim_gate(settings: Settings, auth: AuthPolicy | None) -> GatePolicy:
    """What the shim checks before its routes run (rest.gate); `auth`: the service's own policy,
    when the shim runs in its process, so a key is checked before a body is read."""

    async def check_key(authorization: str | None) -> str | None:
        assert auth is not None
        try:
            auth.authenticate([("authorization", authorization)] if authorization else [])
        except Unauthenticated as exc:
            return str(exc)
        return None

    s = settings.server
    return GatePolicy(
        max_body_bytes=body_limit(settings),
        hosts=tuple(s.allowed_hosts),
        origins=tuple(s.allowed_origins),
        public=frozenset(settings.auth.public),
        check_key=None if auth is None else check_key,
        keys_required=None if auth is None else not auth.open,
    )


def announced_target(settings: Settings, port: int) -> str:
    """Where a gateway is told to reach this service: announce.target, else server.host and
    the gRPC port (a wildcard host names no address another machine can use)."""
    if settings.announce.target:
        return settings.announce.target
    if settings.server.host in ("", "0.0.0.0", "::"):
        raise SettingsError(
            f"announce.target: server.host is {settings.server.host or 'unset'}; say where the gateway "
            "reaches this service (host:port)"
        )
    return local_target(settings.server.host, port)


def freeze_what_started() -> None:
    """Collect once, then move every object alive now (modules, settings, the apps, the
    model's wrappers: hundreds of thousands) out of the garbage collector's sight
    (gc.freeze). Without it each full collection walks them all while every request waits:
    at 32 callers that was the p99 (110 ms against 45 ms; docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    log.info("%d objects frozen out of garbage collection", gc.get_freeze_count())


def local_target(host: str, port: int) -> str:
    """host:port for reaching our own gRPC server: a wildcard becomes loopback, IPv6 gets brackets."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: Settings, worker: WorkerRole | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return. `worker`: as one of several
    processes sharing the ports, started by the supervisor (llmservice.workers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = settings.server.host

    def listening(port: int) -> None:
        print(
            f"llmservice: gRPC listening on {host}:{port} (NOT_SERVING until the model is loaded)", flush=True
        )

    grace = settings.server.drain_grace_s
    running = running_service(settings, listening, worker=worker)
    async with running as server, contextlib.AsyncExitStack() as shim:
        draining = asyncio.Event()
        if settings.server.http_port >= 0:
            from llmservice.rest.server import running_shim  # the shim is a client of this service

            target = local_target(host, server.port)
            connect = server.in_process_channel if settings.server.shim_in_process else None
            gate = shim_gate(settings, server.auth)
            # The shim's own grace outlasts the service's by a little, so that a stream the
            # service cuts at the end of its grace still reaches its client as an error.
            shim_running = running_shim(
                target,
                host,
                settings.server.http_port,
                server.tracing,
                connect,
                gate,
                grace + 2,
                draining,
                reuse_port=worker is not None,
            )
            http_port = await shim.enter_async_context(shim_running)
            print(f"llmservice: HTTP shim (OpenAI API) on http://{host}:{http_port}", flush=True)
        if server.metrics_port >= 0:
            metrics_url = f"http://{host}:{server.metrics_port}/metrics"
            print(f"llmservice: Prometheus metrics on {metrics_url}", flush=True)
        if settings.server.gc_freeze:
            freeze_what_started()
        print(f"llmservice: ready, SERVING on {host}:{server.port}", flush=True)
        await stop.wait()
        print(f"llmservice: draining (up to {grace:g} s)", flush=True)
        # Both sides at once: the shim stops accepting connections, gRPC health says
        # NOT_SERVING and new calls are refused; then in-flight calls, streams and session
        # turns (the shim's among them) get the grace to end.
        draining.set()
        await server.drain(grace)
    print("llmservice: stopped", flush=True)
