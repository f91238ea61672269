"""`openai_compatible` against a real third-party server: llama.cpp's own, on the bundled model."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.model_file import bundled_model_path
from llmservice.providers.llamacpp.settings import LlamaCppSettings
from llmservice.providers.openai_family.settings import OpenAICompatibleSettings
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import ServerSettings, Settings

ALIAS = "smollm2-upstream"


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[str]:
    """llama-cpp-python's server (`llama_cpp.server`) with the bundled model on a free port; its /v1 URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = bundled_model_path(LlamaCppSettings().cache_dir)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.llama_cpp_server",
        "--model",
        str(model),
        "--model_alias",
        ALIAS,
        "--n_ctx",
        "2048",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                try:
                    if (await client.get(f"{url}/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture(scope="module")
async def stub(upstream: str) -> AsyncIterator[pb_grpc.LLMServiceStub]:
    settings = Settings(
        provider="openai_compatible",
        server=ServerSettings(grpc_port=0),
        openai_compatible=OpenAICompatibleSettings(base_url=upstream, flavour="llamacpp"),
    )
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.LLMServiceStub(channel)


def ask(text: str) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content=text)], temperature=0, max_tokens=12
    )


async def test_the_default_model_is_the_one_the_server_names(stub: pb_grpc.LLMServiceStub) -> None:
    models = await stub.ListModels(pb.ListModelsRequest())
    assert [(m.id, m.provider, m.is_default) for m in models.models] == [(ALIAS, "openai_compatible", True)]


async def test_chat_and_stream_chat_agree_at_temperature_zero(stub: pb_grpc.LLMServiceStub) -> None:
    # A question the model is sure of: llama-cpp-python's server re-evaluates a repeated
    # prompt's last token alone, and on an open question that moves a greedy reply.
    reply = await stub.Chat(ask("What is 2+2?"))
    chunks = [c async for c in stub.StreamChat(ask("What is 2+2?"))]
    assert reply.content
    assert "".join(c.token for c in chunks) == reply.content
    last = chunks[-1]
    assert last.done
    assert last.provider == "openai_compatible"
    assert reply.completion_tokens > 0
    assert reply.prompt_tokens > 0
    # llama.cpp's server leaves usage out of streams (it ignores stream_options): none is invented.
    assert last.completion_tokens == 0


async def test_upstream_logprobs_arrive_as_marked_signals(stub: pb_grpc.LLMServiceStub) -> None:
    request = ask("Name a colour.")
    request.signal_options.top_k = 3
    chunks = [c async for c in stub.StreamChat(request)]
    signals = [c.signal for c in chunks if c.token]
    assert signals
    for signal in signals:
        assert signal.source == pb.SIGNAL_SOURCE_UPSTREAM_LOGPROBS
        assert 0 < signal.confidence <= 1
        probs = [c.prob for c in signal.top_k]
        assert probs == sorted(probs, reverse=True)
        assert len(probs) == 3


async def test_signals_logprobs_cannot_give_are_invalid_argument(stub: pb_grpc.LLMServiceStub) -> None:
    request = ask("Hi")
    request.signal_options.sampler_stages = True
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampler stages" in (raised.value.details() or "")


async def test_llama_cpp_server_takes_the_repetition_penalty_by_its_own_name(
    stub: pb_grpc.LLMServiceStub,
) -> None:
    request = ask("Name a colour.")
    request.repetition_penalty = 1.3
    request.top_k = 20
    reply = await stub.Chat(request)
    assert reply.content
