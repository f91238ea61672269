"""API keys map to principals; each sees and uses only its models, over gRPC metadata."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.openai_server import fake_openai

KEY_A, KEY_B = "key-team-a-123", "key-team-b-456"
HI = [pb.ChatMessage(role="user", content="Hi")]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[pb_grpc.LLMServiceStub]:
    with fake_openai() as upstream:
        settings = Settings.model_validate(
            {
                "provider": "openai",
                "server": {"grpc_port": 0},
                "openai": {"api_key": "k", "base_url": upstream.url + "/v1", "model": "fake-model"},
                "auth": {
                    "principals": {
                        "team-a": {"key_sha256": digest(KEY_A), "models": ["fake-model"]},
                        "team-b": {"key_sha256": digest(KEY_B), "models": ["anthropic/*"]},
                    }
                },
            }
        )
        async with (
            running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            yield pb_grpc.LLMServiceStub(channel)


def key(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


@pytest.mark.parametrize(
    "metadata", [(), key("wrong-key"), (("authorization", KEY_A),)], ids=["none", "wrong", "no scheme"]
)
async def test_a_missing_or_unknown_key_is_unauthenticated_without_hints(
    stub: pb_grpc.LLMServiceStub, metadata: tuple[tuple[str, str], ...]
) -> None:
    for call in (
        stub.Chat(pb.LLMChatRequest(messages=HI), metadata=metadata),
        stub.ListModels(pb.ListModelsRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "team" not in (raised.value.details() or "")


async def test_a_principal_uses_and_lists_its_models(stub: pb_grpc.LLMServiceStub) -> None:
    reply = await stub.Chat(pb.LLMChatRequest(messages=HI), metadata=key(KEY_A))
    models = await stub.ListModels(pb.ListModelsRequest(), metadata=key(KEY_A))
    assert reply.content == "Hello there"
    assert [m.id for m in models.models] == ["fake-model"]


async def test_a_hidden_model_looks_absent(stub: pb_grpc.LLMServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stub.Chat(pb.LLMChatRequest(messages=HI, model="fake-model"), metadata=key(KEY_B))
    with pytest.raises(grpc.aio.AioRpcError) as absent:
        await stub.Chat(
            pb.LLMChatRequest(messages=HI, model="no-such-model", provider="nope"), metadata=key(KEY_B)
        )
    assert hidden.value.code() == absent.value.code() == grpc.StatusCode.NOT_FOUND
    assert hidden.value.details() == "model 'fake-model' not found"
    assert absent.value.details() == "model 'no-such-model' not found"
    models = await stub.ListModels(pb.ListModelsRequest(), metadata=key(KEY_B))
    assert list(models.models) == []
