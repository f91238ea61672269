"""One in-process service on a free port with the real bundled model, shared by the session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import ServerSettings, Settings


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
