"""One suite every remote backend runs, each against a local server speaking its wire format.

Success (streamed and whole), tool calls, and every failure a gateway must handle the
same way whoever is upstream: rejected key, 429 with Retry-After, 500 then success,
a stream cut midway, a malformed frame, and no trace of the key anywhere.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from llmservice.errors import (
    InvalidRequest,
    LLMServiceError,
    NotFound,
    ProviderAuthFailed,
    ResourceExhausted,
    Unavailable,
)
from llmservice.settings import (
    AnthropicSettings,
    AzureOpenAISettings,
    BedrockSettings,
    OllamaSettings,
    OpenAISettings,
    WatsonxSettings,
)
from llmservice.types import (
    ChatRequest,
    Message,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    assemble_tool_calls,
)
from providers.anthropic import AnthropicProvider
from providers.base import Provider
from providers.bedrock import BedrockProvider
from providers.ollama import OllamaProvider
from providers.openai_family import azure_openai_provider, openai_provider
from providers.remote.retry import RetryPolicy
from providers.watsonx import WatsonxProvider

from ..fakes.anthropic_server import fake_anthropic
from ..fakes.bedrock_server import fake_bedrock
from ..fakes.ollama_server import fake_ollama
from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream
from ..fakes.watsonx_server import fake_watsonx

KEY = "sk-test-LEAKCANARY-0123456789abcdef"
HELLO = ChatRequest((Message("user", "Say hello."),))
WEATHER = Tool(
    "get_weather", "Weather for a city", '{"type": "object", "properties": {"city": {"type": "string"}}}'
)


@dataclass
class Backend:
    name: str
    fake: Callable[..., AbstractContextManager[Upstream]]
    make: Callable[[Upstream], Provider]
    key_header: tuple[str, str] | None  # where the key travels (header, value); None: no key


BACKENDS = [
    Backend(
        "openai",
        fake_openai,
        lambda up: openai_provider(
            OpenAISettings(api_key=SecretStr(KEY), base_url=up.url + "/v1", model="m")
        ),
        ("authorization", f"Bearer {KEY}"),
    ),
    Backend(
        "azure_openai",
        fake_openai,
        lambda up: azure_openai_provider(
            AzureOpenAISettings(
                api_key=SecretStr(KEY), endpoint=up.url, deployment="m", api_version="2024-10-21"
            )
        ),
        ("api-key", KEY),
    ),
    Backend(
        "anthropic",
        fake_anthropic,
        lambda up: AnthropicProvider(AnthropicSettings(api_key=SecretStr(KEY), base_url=up.url, model="m")),
        ("x-api-key", KEY),
    ),
    Backend(
        "watsonx",
        lambda *script: fake_watsonx(*script, api_key=KEY),
        lambda up: WatsonxProvider(
            WatsonxSettings(api_key=SecretStr(KEY), url=up.url, iam_url=up.url, project_id="p1", model="m")
        ),
        ("authorization", "Bearer tok-0"),
    ),
    Backend(
        "aws_bedrock",
        lambda *script: fake_bedrock(*script, access_key="AKIDFAKE", secret_key=KEY, region="eu-west-1"),
        lambda up: BedrockProvider(BedrockSettings(model="m", region="eu-west-1", endpoint_url=up.url)),
        ("authorization", "Credential=AKIDFAKE/"),
    ),
    Backend(
        "ollama",
        fake_ollama,
        lambda up: OllamaProvider(OllamaSettings(base_url=up.url, model="m")),
        None,
    ),
]


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bedrock's credentials from the environment only: no profile files, no metadata service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def running(backend: Backend, *script: Reply) -> AsyncIterator[tuple[Provider, Upstream]]:
    with backend.fake(*script) as upstream:
        provider = backend.make(upstream)
        provider.retry = RetryPolicy(attempts=3, base_s=0.01)  # type: ignore[attr-defined]
        async with provider:
            yield provider, upstream


async def collect(provider: Provider, request: ChatRequest = HELLO) -> list[StreamEvent]:
    return [event async for event in provider.stream("m", request)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def test_a_stream_arrives_whole(backend: Backend) -> None:
    async with running(backend, Reply(text="Hello there, friend")) as (provider, upstream):
        events = await collect(provider)
    assert text_of(events) == "Hello there, friend"
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (5, 3)
    if backend.key_header is not None:
        name, value = backend.key_header
        assert value in upstream.headers[0][name]


async def test_a_whole_reply(backend: Backend) -> None:
    async with running(backend, Reply(text="All good")) as (provider, _):
        completion = await provider.complete("m", HELLO)
    assert (completion.text, completion.finish_reason, completion.provider) == (
        "All good",
        "stop",
        backend.name,
    )
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 2)


async def test_tool_calls_stream_and_come_whole(backend: Backend) -> None:
    request = ChatRequest(
        (
            Message("user", "Weather in Paris?"),
            Message("assistant", "", (ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)),
            Message("tool", "cold", tool_call_id="call_0"),
        ),
        tools=(WEATHER,),
    )
    calls = [("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_weather", '{"city": "Rome"}')]
    async with running(backend, Reply(text="Checking", tool_calls=calls)) as (provider, _):
        provider.validate("m", request)
        events = await collect(provider, request)
        completion = await provider.complete("m", request)
    expected = tuple(ToolCall(*c) for c in calls)
    assert assemble_tool_calls([e for e in events if isinstance(e, ToolCallDelta)]) == expected
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    assert completion.tool_calls == expected


async def test_500_then_success_is_retried(backend: Backend) -> None:
    async with running(backend, Reply(status=500, error="boom"), Reply(text="ok now")) as (
        provider,
        upstream,
    ):
        assert text_of(await collect(provider)) == "ok now"
    assert len(upstream.requests) == 2


async def test_429_waits_its_retry_after(backend: Backend) -> None:
    script = (Reply(status=429, error="slow down", headers={"retry-after": "0"}), Reply())
    async with running(backend, *script) as (provider, upstream):
        assert text_of(await collect(provider)) == "Hello there"
    assert len(upstream.requests) == 2


async def test_a_long_retry_after_goes_back_to_the_caller(backend: Backend) -> None:
    async with running(backend, Reply(status=429, error="quota", headers={"retry-after": "120"})) as (
        provider,
        up,
    ):
        with pytest.raises(ResourceExhausted) as raised:
            await collect(provider)
    assert raised.value.retry_after_s == 120
    assert len(up.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidRequest), (401, ProviderAuthFailed), (403, ProviderAuthFailed), (404, NotFound)],
)
async def test_client_errors_are_final(backend: Backend, status: int, error: type[LLMServiceError]) -> None:
    async with running(backend, Reply(status=status, error="no")) as (provider, upstream):
        with pytest.raises(error) as raised:
            await collect(provider)
    assert backend.name in raised.value.message
    assert len(upstream.requests) == 1


async def test_a_stream_cut_midway_fails_and_is_not_retried(backend: Backend) -> None:
    seen: list[str] = []

    async def consume(provider: Provider) -> None:
        async for event in provider.stream("m", HELLO):
            if isinstance(event, TokenDelta):
                seen.append(event.text)

    async with running(backend, Reply(text="one two three four", cut_after=2)) as (provider, upstream):
        with pytest.raises(Unavailable, match=backend.name):
            await consume(provider)
    assert "".join(seen) == "one two "
    assert len(upstream.requests) == 1


async def test_an_upstream_that_is_gone_is_unavailable_not_a_timeout(backend: Backend) -> None:
    with backend.fake() as upstream:
        provider = backend.make(upstream)
        provider.retry = RetryPolicy(attempts=2, base_s=0.01)  # type: ignore[attr-defined]
    async with provider:  # its port is closed now: connections are refused
        with pytest.raises(Unavailable, match=backend.name):
            await provider.complete("m", HELLO)
        with pytest.raises(Unavailable, match=backend.name):
            await collect(provider)


async def test_a_malformed_frame_is_an_error_not_a_crash(backend: Backend) -> None:
    async with running(backend, Reply(text="one two three", malformed=True)) as (provider, _):
        with pytest.raises(Unavailable, match="could not be read"):
            await collect(provider)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.key_header], ids=lambda b: b.name)
async def test_the_key_appears_in_no_error_and_no_log_line(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echoes = [
        Reply(status=401, error=f"Incorrect API key provided: {KEY[:8]}***{KEY[-4:]}"),
        Reply(status=400, error=f"bad request for key {KEY}"),
        Reply(status=404, error=f"no model for {KEY}"),
        Reply(status=429, error=f"limit for {KEY}", headers={"retry-after": "999"}),
        Reply(status=500, error=f"crash with {KEY}"),
    ]
    messages: list[str] = []
    for reply in echoes:
        async with running(backend, reply) as (provider, _):
            provider.retry = RetryPolicy(attempts=1)  # type: ignore[attr-defined]
            for call in (collect(provider), provider.complete("m", HELLO)):
                with pytest.raises(LLMServiceError) as raised:
                    await call
                messages.append(str(raised.value))
            await provider.list_models()
    assert backend.name in messages[0]
    everything = "\n".join(messages) + caplog.text
    assert not [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in everything]


def test_every_remote_backend_is_in_the_suite() -> None:
    from providers import REMOTE

    covered: set[str] = {b.name for b in BACKENDS} | {"openai_compatible"}  # against a real server
    assert set(REMOTE) <= covered
