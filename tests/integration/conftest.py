"""One in-process service on a free port with the real bundled model, shared by the session."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import openai
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import ServerSettings, Settings

from ..fakes.openai_server import Reply, fake_openai
from ..fakes.upstream import Upstream


@dataclass
class Service:
    target: str
    engine: LlamaCppProvider
    in_process: Callable[[], Any]  # a channel without sockets, as `serve` gives its shim

    @property
    def tokens_generated(self) -> int:
        return self.engine.tokens_generated


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(server=ServerSettings(grpc_port=0, drain_grace_s=5))


@pytest.fixture(scope="session")
async def service(settings: Settings) -> AsyncIterator[Service]:
    registry = ProviderRegistry.from_settings(settings)
    provider, _ = registry.resolve("", "")
    assert isinstance(provider, LlamaCppProvider)
    async with running_service(settings, registry=registry) as server:
        yield Service(f"127.0.0.1:{server.port}", provider, server.in_process_channel)


@pytest.fixture(scope="session")
async def channel(service: Service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(service.target) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> pb_grpc.LLMServiceStub:
    return pb_grpc.LLMServiceStub(channel)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    """Wait until `predicate()` holds: for state inside the service that offers no event."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 -- polling is the point
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
async def base_url(service: Service) -> AsyncIterator[str]:
    """The /v1 URL of a shim in front of the shared service, in process as `llmservice serve`
    runs it (test_metrics.py and test_observability.py drive one over real gRPC)."""
    async with running_shim(service.target, "127.0.0.1", 0, connect=service.in_process) as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official openai client of that shim."""
    async with openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0) as client:
        yield client


@contextlib.asynccontextmanager
async def shim_in_front_of(settings: dict[str, Any]) -> AsyncIterator[str]:
    """The root URL of a shim in front of its own service with these settings (a remote
    provider behind it, usually), both on free ports."""
    config = Settings.model_validate({"server": {"grpc_port": 0}, **settings})
    async with (
        running_service(config, registry=ProviderRegistry.from_settings(config)) as server,
        running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0, connect=server.in_process_channel) as port,
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name looked up is refused unless it is loopback's; the names asked for are kept."""
    asked: list[str] = []
    lookup = socket.getaddrinfo

    def loopback(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "localhost", "::1", "None"):
            asked.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: only loopback in this test")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback)
    return asked


@pytest.fixture
async def litellm() -> AsyncIterator[Any]:
    """litellm, imported with its model cost map read from the package (never fetched) and
    its telemetry off. The HTTP clients it keeps are its own: it closes the ones it can, and
    those it leaves open (its OpenAI SDK clients are reference cycles) are collected here,
    where their unclosed-socket warnings are litellm's, not in whatever test runs next."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # read when it is imported
    import litellm

    litellm.telemetry = False
    yield litellm
    await litellm.close_litellm_async_clients()
    litellm.in_memory_llm_clients_cache.flush_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@contextlib.asynccontextmanager
async def shim_in_front_of_fake_openai(
    *script: Reply, **settings: Any
) -> AsyncIterator[tuple[str, Upstream]]:
    """(the shim's root URL, the upstream) of a service whose provider is a fake OpenAI
    upstream answering with `script` (model fake-model); `settings` go to the service too."""
    with fake_openai(*script) as upstream:
        openai_settings = {"api_key": "k", "base_url": upstream.url + "/v1", "model": "fake-model"}
        async with shim_in_front_of({"provider": "openai", "openai": openai_settings, **settings}) as root:
            yield root, upstream
