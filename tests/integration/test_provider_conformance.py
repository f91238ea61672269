"""One suite every remote backend runs, each against a local server speaking its wire format.

Success (streamed and whole), tool calls, and every failure a gateway must handle the
same way whoever is upstream: rejected key, 429 with Retry-After, 500 then success,
connect timeouts, a stream cut midway or stalled, malformed frames and bodies, errors
sent inside a stream, and no trace of the key anywhere (errors, log lines, gRPC status).
Bedrock's cases need botocore (the `bedrock` extra) and are skipped without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from llmservice.grpc_api.status import to_status
from llmservice.kernel.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LLMServiceError,
    NotFound,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import (
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
from llmservice.providers.anthropic.provider import AnthropicProvider
from llmservice.providers.anthropic.settings import AnthropicSettings
from llmservice.providers.bedrock.settings import BedrockSettings
from llmservice.providers.ollama.provider import OllamaProvider
from llmservice.providers.ollama.settings import OllamaSettings
from llmservice.providers.openai_family.provider import (
    azure_openai_provider,
    openai_compatible_provider,
    openai_provider,
)
from llmservice.providers.openai_family.settings import (
    AzureOpenAISettings,
    OpenAICompatibleSettings,
    OpenAISettings,
)
from llmservice.providers.remote.retry import RetryPolicy
from llmservice.providers.watsonx.provider import WatsonxProvider
from llmservice.providers.watsonx.settings import WatsonxSettings

from ..fakes.anthropic_server import fake_anthropic
from ..fakes.ollama_server import fake_ollama
from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream, unanswered_port
from ..fakes.watsonx_server import Tokens, fake_watsonx

KEY = "sk-test-LEAKCANARY-0123456789abcdef"
HELLO = ChatRequest((Message("user", "Say hello."),))
WEATHER = Tool(
    "get_weather", "Weather for a city", '{"type": "object", "properties": {"city": {"type": "string"}}}'
)


@dataclass
class Backend:
    name: str
    fake: Callable[..., AbstractContextManager[Upstream]]
    make: Callable[..., Provider]  # (upstream, **remote settings such as timeout_s) -> provider
    key_header: tuple[str, str] | None  # where the key travels (header, value); None: no key


def _fake_bedrock(*script: Reply) -> AbstractContextManager[Upstream]:
    pytest.importorskip("botocore")  # the optional extra
    from ..fakes.bedrock_server import fake_bedrock

    return fake_bedrock(*script, access_key="AKIDFAKE", secret_key=KEY, region="eu-west-1")


def _bedrock(up: Upstream, **settings: Any) -> Provider:
    pytest.importorskip("botocore")
    from llmservice.providers.bedrock.provider import BedrockProvider

    return BedrockProvider(BedrockSettings(model="m", region="eu-west-1", endpoint_url=up.url, **settings))


BACKENDS = [
    Backend(
        "openai",
        fake_openai,
        lambda up, **kw: openai_provider(
            OpenAISettings(api_key=SecretStr(KEY), base_url=up.url + "/v1", model="m", **kw)
        ),
        ("authorization", f"Bearer {KEY}"),
    ),
    Backend(
        "azure_openai",
        fake_openai,
        lambda up, **kw: azure_openai_provider(
            AzureOpenAISettings(
                api_key=SecretStr(KEY), endpoint=up.url, deployment="m", api_version="2024-10-21", **kw
            )
        ),
        ("api-key", KEY),
    ),
    Backend(  # the fake OpenAI server here; a real one (llama.cpp's) in test_openai_compatible
        "openai_compatible",
        fake_openai,
        lambda up, **kw: openai_compatible_provider(
            OpenAICompatibleSettings(api_key=SecretStr(KEY), base_url=up.url + "/v1", model="m", **kw)
        ),
        ("authorization", f"Bearer {KEY}"),
    ),
    Backend(
        "anthropic",
        fake_anthropic,
        lambda up, **kw: AnthropicProvider(
            AnthropicSettings(api_key=SecretStr(KEY), base_url=up.url, model="m", **kw)
        ),
        ("x-api-key", KEY),
    ),
    Backend(
        "watsonx",
        lambda *script: fake_watsonx(*script, api_key=KEY),
        lambda up, **kw: WatsonxProvider(
            WatsonxSettings(
                api_key=SecretStr(KEY), url=up.url, iam_url=up.url, project_id="p1", model="m", **kw
            )
        ),
        ("authorization", "Bearer tok-0"),
    ),
    Backend("aws_bedrock", _fake_bedrock, _bedrock, ("authorization", "Credential=AKIDFAKE/")),
    Backend(
        "ollama",
        fake_ollama,
        lambda up, **kw: OllamaProvider(OllamaSettings(base_url=up.url, model="m", **kw)),
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
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.cached_tokens) == (5, 3, 0)
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


NO_CACHE_REPORT = {"watsonx", "ollama"}  # their APIs say nothing of a prompt cache


async def test_cached_prompt_tokens_are_counted_within_the_prompt(backend: Backend) -> None:
    """Each vendor's own way of telling cache hits (OpenAI's within prompt_tokens, Anthropic's
    and Bedrock's beside input tokens) comes out the same: 5 prompt tokens, 3 of them cached."""
    if backend.name in NO_CACHE_REPORT:
        pytest.skip(f"{backend.name} reports no cached prompt tokens")
    async with running(backend, Reply(text="All good", cached_tokens=3)) as (provider, _):
        events = await collect(provider)
        completion = await provider.complete("m", HELLO)
    end = events[-1]
    assert isinstance(end, StreamEnd)
    for usage in (end.usage, completion.usage):
        assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (5, 3, 2)


async def test_the_cache_partition_is_not_sent_upstream(backend: Backend) -> None:
    request = replace(HELLO, cache_salt="salt-PARTITION", principal="principal-PARTITION")
    async with running(backend, Reply()) as (provider, upstream):
        await provider.complete("m", request)
        await collect(provider, request)
    assert "PARTITION" not in json.dumps(upstream.requests)


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


async def test_at_most_one_tool_call_when_asked_for_one(backend: Backend) -> None:
    """`parallel_tool_calls: false` is sent where the vendor has the switch (then the vendor
    keeps to one call; this fake does not), and kept by passing on the first call elsewhere."""
    request = replace(
        ChatRequest((Message("user", "Weather in Paris and Rome?"),), tools=(WEATHER,)),
        parallel_tool_calls=False,
    )
    calls = [("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_weather", '{"city": "Rome"}')]
    async with running(backend, Reply(text="", tool_calls=calls)) as (provider, upstream):
        events = await collect(provider, request)
        completion = await provider.complete("m", request)
    switch = provider.one_call_switch  # type: ignore[attr-defined]
    expected = tuple(ToolCall(*c) for c in (calls if switch else calls[:1]))
    assert assemble_tool_calls([e for e in events if isinstance(e, ToolCallDelta)]) == expected
    assert completion.tool_calls == expected
    if switch:
        body = json.dumps(upstream.requests[0])
        assert '"parallel_tool_calls": false' in body or '"disable_parallel_tool_use": true' in body


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


BROKEN = [
    pytest.param(Reply(text="one two three", malformed=True), id="not-json"),
    pytest.param(Reply(text="one two three", misshapen=True), id="wrong-shape"),
]


@pytest.mark.parametrize("reply", BROKEN)
async def test_a_malformed_frame_is_a_provider_error_not_a_crash(backend: Backend, reply: Reply) -> None:
    async with running(backend, reply) as (provider, upstream):
        with pytest.raises(Unavailable, match="could not be read") as raised:
            await collect(provider)
    assert backend.name in raised.value.message
    assert to_status(raised.value)[0].name == "UNAVAILABLE"
    assert len(upstream.requests) == 1  # a token had gone out: not retried


@pytest.mark.parametrize("reply", BROKEN)
async def test_a_malformed_whole_reply_is_a_provider_error_not_a_crash(
    backend: Backend, reply: Reply
) -> None:
    async with running(backend, reply) as (provider, _):
        with pytest.raises(Unavailable, match="could not be read") as raised:
            await provider.complete("m", HELLO)
    assert to_status(raised.value)[0].name == "UNAVAILABLE"


async def test_an_error_sent_inside_the_stream_is_a_provider_error(backend: Backend) -> None:
    seen: list[str] = []

    async def consume(provider: Provider) -> None:
        async for event in provider.stream("m", HELLO):
            if isinstance(event, TokenDelta):
                seen.append(event.text)

    async with running(backend, Reply(text="one two three", error_midway="model overloaded")) as (
        provider,
        upstream,
    ):
        with pytest.raises(Unavailable, match="model overloaded") as raised:
            await consume(provider)
    assert backend.name in raised.value.message
    assert seen == ["one "]
    assert len(upstream.requests) == 1


async def test_a_stream_that_stalls_midway_is_a_provider_timeout(backend: Backend) -> None:
    seen: list[str] = []

    async def consume(provider: Provider) -> None:
        async for event in provider.stream("m", HELLO):
            if isinstance(event, TokenDelta):
                seen.append(event.text)

    with backend.fake(Reply(text="one two", pace_s=3.0)) as upstream:
        provider = backend.make(upstream, timeout_s=0.3)
        async with provider:
            with pytest.raises(DeadlineExceeded) as raised:
                await consume(provider)
    assert type(raised.value) is DeadlineExceeded  # not retried: the answer had begun
    assert backend.name in raised.value.message
    assert to_status(raised.value)[0].name == "DEADLINE_EXCEEDED"
    assert seen == ["one "]
    assert len(upstream.requests) == 1


async def test_a_connect_timeout_is_retried_then_a_provider_timeout(backend: Backend) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    with unanswered_port() as url:
        provider = backend.make(Upstream(url, []), connect_timeout_s=0.2)
        provider.retry = RetryPolicy(attempts=2, base_s=0.01, sleep=sleep)  # type: ignore[attr-defined]
        async with provider:
            for call in (collect(provider), provider.complete("m", HELLO)):
                with pytest.raises(ProviderTimeout, match=backend.name) as raised:
                    await call
                assert to_status(raised.value)[0].name == "DEADLINE_EXCEEDED"
    assert len(sleeps) == 2  # one retry for each call


async def test_a_504_is_retried_like_other_5xx(backend: Backend) -> None:
    async with running(backend, Reply(status=504, error="gateway timeout"), Reply(text="ok now")) as (
        provider,
        upstream,
    ):
        assert text_of(await collect(provider)) == "ok now"
    assert len(upstream.requests) == 2


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
    in_streams = [
        Reply(text="one two three", error_midway=f"overloaded, key {KEY}"),
        Reply(text="one two three", cut_after=1),
        Reply(text="one two three", malformed=True),
        Reply(text="one two three", misshapen=True),
    ]
    messages: list[str] = []

    def record(exc: LLMServiceError) -> None:
        _, details, trailers = to_status(exc)  # what the service would send the caller
        messages.extend((str(exc), exc.message, details, repr(trailers)))

    for reply in echoes:
        async with running(backend, reply) as (provider, _):
            provider.retry = RetryPolicy(attempts=1)  # type: ignore[attr-defined]
            for call in (collect(provider), provider.complete("m", HELLO)):
                with pytest.raises(LLMServiceError) as raised:
                    await call
                record(raised.value)
            await provider.list_models()
    for reply in in_streams:
        async with running(backend, reply) as (provider, _):
            with pytest.raises(LLMServiceError) as raised:
                await collect(provider)
            record(raised.value)
    with backend.fake() as gone:
        provider = backend.make(gone)
        provider.retry = RetryPolicy(attempts=1)  # type: ignore[attr-defined]
    async with provider:  # refused connections
        for call in (collect(provider), provider.complete("m", HELLO)):
            with pytest.raises(LLMServiceError) as raised:
                await call
            record(raised.value)
        await provider.list_models()
    assert backend.name in messages[0]
    everything = "\n".join(messages) + caplog.text
    assert not [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in everything]


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_a_failed_iam_exchange_leaks_no_key(status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = Tokens(KEY, failure=(status, f"IAM cannot use apikey {KEY}"))
    messages: list[str] = []
    with fake_watsonx(api_key=KEY, tokens=tokens) as upstream:
        provider = WatsonxProvider(
            WatsonxSettings(api_key=SecretStr(KEY), url=upstream.url, iam_url=upstream.url, project_id="p")
        )
        provider.retry = RetryPolicy(attempts=1)
        async with provider:
            for call in (collect(provider), provider.complete("m", HELLO)):
                with pytest.raises(LLMServiceError) as raised:
                    await call
                messages += [str(raised.value), to_status(raised.value)[1]]
            await provider.list_models()
    assert "watsonx" in messages[0]
    everything = "\n".join(messages) + caplog.text
    assert not [KEY[i : i + 8] for i in range(len(KEY) - 7) if KEY[i : i + 8] in everything]


def test_every_remote_backend_is_in_the_suite() -> None:
    from llmservice.providers import entries

    remote = [kind for kind, entry in entries().items() if not entry.local]

    # `grpc` forwards to another llmservice, a real one in test_grpc_backend.py
    assert set(remote) - {"grpc"} <= {b.name for b in BACKENDS}
