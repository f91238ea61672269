"""Standard health and server reflection, as grpcurl and buf curl use them."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from llmservice.app import running_service
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.held_provider import HeldAtStart
from .conftest import Service

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BUF = Path(__file__).parents[2] / "node_modules" / ".bin" / "buf"


async def test_health_is_serving_for_the_server_and_each_service_name(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "llmservice.v1.LLMService", "protocol.LLMService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == SERVING, name


async def test_health_is_not_serving_until_the_default_model_is_loaded(settings: Settings) -> None:
    provider = HeldAtStart()
    ports: asyncio.Queue[int] = asyncio.Queue()
    registry = ProviderRegistry({"slow": provider}, "slow")
    ready = asyncio.Event()

    async def run() -> None:
        async with running_service(settings, ports.put_nowait, registry):
            ready.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(run())
    port = await ports.get()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
        provider.release.set()
        await ready.wait()
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_reflection_lists_and_describes_every_service(service: Service) -> None:
    # The reflection client is synchronous: run it off the event loop that serves it.
    await asyncio.to_thread(_check_reflection, service.target)


def _check_reflection(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"llmservice.v1.LLMService", "protocol.LLMService", "grpc.health.v1.Health"} <= services
        pool = DescriptorPool(db)
        v1 = pool.FindServiceByName("llmservice.v1.LLMService")
        assert [m.name for m in v1.methods] == ["Chat", "StreamChat", "ListModels", "Embed", "CountTokens"]
        legacy = pool.FindServiceByName("protocol.LLMService")
        assert legacy.FindMethodByName("StreamChat").output_type.full_name == "llmservice.v1.LLMChatChunk"


@pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make test` (npm ci)")
@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_buf_curl_calls_through_reflection(service: Service, protocol: str) -> None:
    """buf curl knows nothing of our protos: it reads them from the server by reflection,
    speaking only the reflection protocol it is told to (tools that know v1 alone, too)."""
    base = f"http://{service.target}"
    common = [
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        protocol,
    ]
    models = await run(*common, f"{base}/llmservice.v1.LLMService/ListModels")
    assert json.loads(models)["models"][0]["id"] == "smollm2-135m-instruct-q4_1"
    body = json.dumps({"userPrompt": "Say hi.", "maxTokens": 3})
    chat = await run(*common, "-d", body, f"{base}/protocol.LLMService/Chat")
    assert json.loads(chat)["completionTokens"] == 3
    listed = await run(*common, "--list-methods", base)
    # Listing methods describes every service, reflection itself (under both names) too.
    assert {
        "protocol.LLMService/StreamChat",
        "llmservice.v1.LLMService/CountTokens",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    } <= set(listed.split())


async def run(*argv: str) -> str:
    """A command's stdout; the event loop keeps serving while it runs."""
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout
