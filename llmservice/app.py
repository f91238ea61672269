"""The application's lifespan: providers, core and gRPC server, started and drained together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

from .auth import AuthPolicy
from .core import LLMCore
from .embed_cache import FILE_NAME as CACHE_FILE
from .embed_cache import EmbeddingCache
from .limits import Limits
from .model_admin import ModelAdmin
from .registry import ProviderRegistry
from .server import GrpcServer, start_server
from .sessions import SessionManager
from .sessions.catalogue import ServerCatalogue
from .settings import Settings

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings,
    on_listening: Callable[[int], None] | None = None,
    registry: ProviderRegistry | None = None,
) -> AsyncIterator[GrpcServer]:
    """Serve until the block ends, then drain in-flight calls within the grace period.

    The port is open (health NOT_SERVING) while providers start; SERVING follows once
    the default model is loaded.
    """
    registry = registry or ProviderRegistry.from_settings(settings)
    auth = AuthPolicy.from_settings(settings.auth)
    if auth.open:
        log.warning("no API keys configured: open local mode, every caller may use every model")
    e = settings.embeddings
    embed_cache = EmbeddingCache(e.cache_dir / CACHE_FILE) if e.cache else None
    limits = Limits.from_settings(settings)
    core = LLMCore(registry, embed_cache, e.max_inputs, limits)
    sessions = SessionManager(core, settings.llmchat, settings.cache)
    catalogue = ServerCatalogue(settings.llmchat)
    server = await start_server(
        core, settings.server.host, settings.server.grpc_port, auth, sessions, catalogue, ModelAdmin(registry)
    )
    if on_listening:
        on_listening(server.port)
    try:
        async with registry, sessions, limits, embed_cache or contextlib.nullcontext():
            await server.set_serving(True)
            yield server
            await server.drain(settings.server.drain_grace_s)
    finally:
        await server.server.stop(None)


def local_target(host: str, port: int) -> str:
    """host:port for reaching our own gRPC server: a wildcard becomes loopback, IPv6 gets brackets."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = settings.server.host

    def listening(port: int) -> None:
        print(
            f"llmservice: gRPC listening on {host}:{port} (NOT_SERVING until the model is loaded)", flush=True
        )

    async with running_service(settings, listening) as server, contextlib.AsyncExitStack() as shim:
        if settings.server.http_port >= 0:
            from gateway_shim.server import running_shim  # the shim is a client of this service

            target = local_target(host, server.port)
            http_port = await shim.enter_async_context(running_shim(target, host, settings.server.http_port))
            print(f"llmservice: HTTP shim (OpenAI API) on http://{host}:{http_port}", flush=True)
        print(f"llmservice: ready, SERVING on {host}:{server.port}", flush=True)
        await stop.wait()
        print(f"llmservice: draining (up to {settings.server.drain_grace_s:g} s)", flush=True)
    print("llmservice: stopped", flush=True)
