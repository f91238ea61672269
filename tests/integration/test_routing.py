"""Fallback routes over named deployments, each deployment a local OpenAI-speaking server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.kernel.errors import InvalidRequest, Unavailable
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, Message, StreamEnd, TokenDelta
from llmservice.service.registry import ProviderRegistry
from llmservice.service.routing import FallbackRoute
from llmservice.service.settings import ServerSettings, Settings, load_settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream

HELLO = ChatRequest((Message("user", "Hi"),), model="gpt-4o")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def two_regions(eu: list[Reply], us: list[Reply]) -> Iterator[tuple[Upstream, Upstream, Settings]]:
    with fake_openai(*eu) as up_eu, fake_openai(*us) as up_us:
        deployments = {
            name: {
                "provider": "openai",
                "base_url": up.url + "/v1",
                "model": "gpt-4o",
                "api_key": "k",
                "max_attempts": 1,
            }
            for name, up in (("gpt-eu", up_eu), ("gpt-us", up_us))
        }
        settings = Settings(
            provider="gpt-eu",
            server=ServerSettings(grpc_port=0),
            deployments=deployments,  # type: ignore[arg-type]
            routes={"gpt-4o": ["gpt-eu", "gpt-us"]},
        )
        yield up_eu, up_us, settings


@contextlib.asynccontextmanager
async def route_of(settings: Settings, clock: Clock) -> AsyncIterator[FallbackRoute]:
    async with ProviderRegistry.from_settings(settings) as registry:
        route, _ = registry.resolve("", "gpt-4o")
        assert isinstance(route, FallbackRoute)
        route._clock = clock
        yield route


async def test_a_failing_deployment_falls_back_and_cools_down() -> None:
    clock = Clock()
    with two_regions([Reply(status=503, error="down"), Reply(text="eu again")], [Reply(text="from us")]) as (
        eu,
        us,
        settings,
    ):
        async with route_of(settings, clock) as route:
            first = [e async for e in route.stream("gpt-4o", HELLO)]
            during = await route.complete("gpt-4o", HELLO)
            clock.now += settings.routing.cooldown_s + 1
            after = await route.complete("gpt-4o", HELLO)
    assert "".join(e.text for e in first if isinstance(e, TokenDelta)) == "from us"
    end = first[-1]
    assert isinstance(end, StreamEnd)
    assert end.provider == "gpt-us"
    assert (during.text, during.provider, during.model) == ("from us", "gpt-us", "gpt-4o")
    assert (after.text, after.provider) == ("eu again", "gpt-eu")  # cooled down, then tried again
    assert (len(eu.requests), len(us.requests)) == (2, 2)
    assert route.fallbacks == 1


async def test_a_bad_request_is_not_sent_elsewhere() -> None:
    with two_regions([Reply(status=400, error="bad")], [Reply()]) as (_, us, settings):
        async with route_of(settings, Clock()) as route:
            with pytest.raises(InvalidRequest):
                await route.complete("gpt-4o", HELLO)
    assert not us.requests


async def test_after_the_first_token_there_is_no_fallback() -> None:
    with two_regions([Reply(text="one two three", cut_after=1)], [Reply()]) as (_, us, settings):
        async with route_of(settings, Clock()) as route:
            with pytest.raises(Unavailable, match="gpt-eu"):
                async for _ in route.stream("gpt-4o", HELLO):
                    pass
    assert not us.requests


async def test_when_every_deployment_fails_the_caller_hears_it() -> None:
    with two_regions([Reply(status=503, error="eu down")], [Reply(status=429, error="us busy")]) as (
        _,
        _,
        settings,
    ):
        async with route_of(settings, Clock()) as route:
            with pytest.raises(Unavailable, match=r"every deployment of gpt-4o failed.*us busy"):
                await route.complete("gpt-4o", HELLO)


async def test_routes_and_deployments_over_grpc() -> None:
    with two_regions([Reply(status=503, error="down")], [Reply(text="from us")]) as (_, _, settings):
        async with (
            running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = pb_grpc.LLMServiceStub(channel)
            request = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Hi")], model="gpt-4o")
            chunks = [c async for c in stub.StreamChat(request)]
            models = {(m.id, m.provider) for m in (await stub.ListModels(pb.ListModelsRequest())).models}
            direct = await stub.Chat(pb.LLMChatRequest(messages=request.messages, provider="gpt-us"))
    assert "".join(c.token for c in chunks) == "from us"
    assert (chunks[-1].provider, chunks[-1].model) == ("gpt-us", "gpt-4o")
    assert {("gpt-4o", "route"), ("gpt-4o", "gpt-eu"), ("gpt-4o", "gpt-us")} <= models
    assert direct.provider == "gpt-us"


def test_deployments_come_from_llm_toml_with_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "llm.toml"
    config.write_text(
        'provider = "claude-eu"\n'
        '[deployments.claude-eu]\nprovider = "anthropic"\nmodel = "claude-x"\napi_key_env = "CLAUDE_EU_KEY"\n'
        '[deployments.local]\nprovider = "ollama"\nmodel = "llama3.2:1b"\n'
        '[routes]\nassistant = ["claude-eu", "local"]\n'
    )
    monkeypatch.setenv("CLAUDE_EU_KEY", "sk-ant-secret")
    registry = ProviderRegistry.from_settings(load_settings(config))
    assert registry.resolve("", "")[0].name == "claude-eu"
    assert registry.resolve("", "assistant")[0].name == "route assistant"
    monkeypatch.delenv("CLAUDE_EU_KEY")
    with pytest.raises(SettingsError, match="CLAUDE_EU_KEY"):
        ProviderRegistry.from_settings(load_settings(config))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[routes]\nx = ["nowhere"]\n', "routes.x: 'nowhere'"),
        ('[deployments.openai]\nprovider = "openai"\napi_key = "k"\n', "name of a provider"),
        (
            '[deployments.d]\nprovider = "azure_openai"\napi_key = "k"\n',
            "deployments.d needs endpoint, deployment",
        ),
        ('[deployments.d]\nprovider = "nope"\n', "deployments.d"),
    ],
)
def test_bad_deployments_and_routes_fail_at_start_up(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "llm.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        ProviderRegistry.from_settings(load_settings(config))
