"""Gateway behaviour across backends, over gRPC: proxies, deadlines, one model list."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from pydantic import SecretStr

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.kernel.types import ChatRequest, Message
from llmservice.providers.openai_family.provider import openai_provider
from llmservice.providers.openai_family.settings import OpenAISettings
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import ServerSettings, Settings

from ..fakes.anthropic_server import fake_anthropic
from ..fakes.ollama_server import fake_ollama
from ..fakes.openai_server import fake_openai
from ..fakes.proxy import forward_proxy
from ..fakes.upstream import Reply
from .conftest import eventually

HI = [pb.ChatMessage(role="user", content="Hi")]


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[pb_grpc.LLMServiceStub]:
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield pb_grpc.LLMServiceStub(channel)


async def test_an_https_upstream_is_reached_through_https_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    with fake_openai(Reply(text="through the proxy"), tls=(str(cert), str(key))) as upstream:
        async with forward_proxy() as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
            for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
                monkeypatch.delenv(name, raising=False)
            settings = OpenAISettings(api_key=SecretStr("sk-x"), base_url=upstream.url + "/v1", model="m")
            async with openai_provider(settings) as provider:
                completion = await provider.complete("m", ChatRequest((Message("user", "Hi"),)))
    assert completion.text == "through the proxy"
    assert proxy.tunnels == [upstream.url.removeprefix("https://")]


async def test_the_callers_deadline_and_a_provider_timeout_are_told_apart() -> None:
    with fake_openai(Reply(text="late", delay_s=1.5)) as upstream:
        settings = Settings(
            provider="openai",
            server=ServerSettings(grpc_port=0),
            openai=OpenAISettings(
                api_key=SecretStr("k"),
                base_url=upstream.url + "/v1",
                model="m",
                timeout_s=0.5,
                max_attempts=1,
            ),
        )
        async with service(settings) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caller:
                await stub.Chat(pb.LLMChatRequest(messages=HI), timeout=0.2)
            with pytest.raises(grpc.aio.AioRpcError) as provider:
                await stub.Chat(pb.LLMChatRequest(messages=HI))
    assert caller.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert provider.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "provider openai did not answer in time" in (provider.value.details() or "")
    assert "provider" not in (caller.value.details() or "")


async def test_list_models_covers_every_configured_backend() -> None:
    with fake_openai() as openai_up, fake_anthropic() as anthropic_up, fake_ollama() as ollama_up:
        settings = Settings.model_validate(
            {
                "provider": "openai",
                "server": {"grpc_port": 0},
                "openai": {"api_key": "k", "base_url": openai_up.url + "/v1", "model": "fake-model"},
                "anthropic": {"api_key": "k", "base_url": anthropic_up.url, "model": "claude-fake"},
                "ollama": {"base_url": ollama_up.url, "model": "llama3.2:1b"},
            }
        )
        async with service(settings) as stub:
            models = (await stub.ListModels(pb.ListModelsRequest())).models
    seen = {(m.provider, m.id): m for m in models}
    assert {("openai", "fake-model"), ("anthropic", "claude-fake"), ("ollama", "llama3.2:1b")} <= set(seen)
    assert seen[("openai", "fake-model")].is_default
    assert seen[("anthropic", "claude-fake")].capabilities.tools
    assert seen[("openai", "fake-model")].capabilities.signals
    assert not seen[("anthropic", "claude-fake")].capabilities.signals


async def test_when_a_backend_is_at_its_concurrency_limit_priority_decides_who_goes_next() -> None:
    with fake_openai(Reply(text="first", delay_s=0.5), Reply(text="next")) as upstream:
        settings = OpenAISettings(
            api_key=SecretStr("k"), base_url=upstream.url + "/v1", model="m", max_concurrency=1
        )
        async with openai_provider(settings) as provider:

            async def ask(text: str, priority: int) -> None:
                await provider.complete("m", ChatRequest((Message("user", text),), priority=priority))

            holder = asyncio.create_task(ask("holder", 5))
            await asyncio.sleep(0.1)  # the one slot is taken
            background = asyncio.create_task(ask("background", 10))
            await asyncio.sleep(0.05)
            interactive = asyncio.create_task(ask("interactive", 0))
            await asyncio.gather(holder, background, interactive)
    order = [r["messages"][0]["content"] for r in upstream.requests]
    assert order == ["holder", "interactive", "background"]


async def test_a_caller_who_goes_away_stops_the_upstream_stream() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    with fake_openai(Reply(text=text, pace_s=0.05)) as upstream:
        settings = Settings(
            provider="openai",
            server=ServerSettings(grpc_port=0),
            openai=OpenAISettings(api_key=SecretStr("k"), base_url=upstream.url + "/v1", model="m"),
        )
        async with service(settings) as stub:
            call = stub.StreamChat(pb.LLMChatRequest(messages=HI))
            seen = 0
            async for chunk in call:
                seen += bool(chunk.token)
                if seen == 2:
                    break
            call.cancel()
            await eventually(lambda: upstream.abandoned == 1, timeout_s=5)
    assert len(upstream.requests) == 1
