"""The OpenAI-family backends against a local server speaking OpenAI's wire format."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from llmservice.errors import (
    InvalidRequest,
    LLMServiceError,
    ProviderAuthFailed,
    ResourceExhausted,
    Unavailable,
)
from llmservice.settings import AzureOpenAISettings, OpenAISettings
from llmservice.types import (
    ChatRequest,
    Message,
    Sampling,
    SignalOptions,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    assemble_tool_calls,
)
from providers.openai_family import OpenAIFamilyProvider, azure_openai_provider, openai_provider
from providers.remote.retry import RetryPolicy

from ..fakes.openai_server import FakeOpenAI, Reply, fake_openai

KEY = "sk-test-LEAKCANARY-0123456789abcdef"
HELLO = ChatRequest((Message("user", "Say hello."),))


@contextlib.asynccontextmanager
async def provider_for(fake: FakeOpenAI) -> AsyncIterator[OpenAIFamilyProvider]:
    provider = openai_provider(OpenAISettings(api_key=SecretStr(KEY), base_url=fake.url, model="fake-model"))
    provider.retry = RetryPolicy(attempts=3, base_s=0.01)
    async with provider:
        yield provider


async def collect(provider: OpenAIFamilyProvider, request: ChatRequest = HELLO) -> list[StreamEvent]:
    return [event async for event in provider.stream("fake-model", request)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def test_a_stream_arrives_whole_through_comments_pings_and_crlf() -> None:
    with fake_openai(Reply(text="Hello there, friend")) as fake:
        async with provider_for(fake) as provider:
            events = await collect(provider)
    assert text_of(events) == "Hello there, friend"
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (5, 3)
    assert fake.headers[0]["authorization"] == f"Bearer {KEY}"


async def test_sampling_parameters_reach_the_upstream() -> None:
    request = ChatRequest(
        (Message("system", "Be brief."), Message("user", "Hi")),
        sampling=Sampling(temperature=0.3, top_p=0.9, max_tokens=7, stop=("END",), seed=4),
    )
    with fake_openai() as fake:
        async with provider_for(fake) as provider:
            await collect(provider, request)
    sent = fake.requests[0]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["stop"], sent["seed"]) == (
        0.3, 0.9, 7, ["END"], 4,
    )  # fmt: skip


async def test_a_parameter_openai_lacks_is_refused() -> None:
    with fake_openai() as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(InvalidRequest, match="top_k"):
                provider.validate("fake-model", ChatRequest(HELLO.messages, sampling=Sampling(top_k=5)))


async def test_500_then_success_is_retried() -> None:
    with fake_openai(Reply(status=500, error="boom"), Reply(text="ok now")) as fake:
        async with provider_for(fake) as provider:
            assert text_of(await collect(provider)) == "ok now"
    assert len(fake.requests) == 2


async def test_429_waits_its_retry_after() -> None:
    with fake_openai(Reply(status=429, error="slow down", headers={"retry-after-ms": "20"}), Reply()) as fake:
        async with provider_for(fake) as provider:
            assert text_of(await collect(provider)) == "Hello there"
    assert len(fake.requests) == 2


async def test_a_long_retry_after_goes_back_to_the_caller() -> None:
    with fake_openai(Reply(status=429, error="quota", headers={"retry-after": "120"})) as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(ResourceExhausted) as raised:
                await collect(provider)
    assert raised.value.retry_after_s == 120
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(400, InvalidRequest), (401, ProviderAuthFailed), (403, ProviderAuthFailed)]
)
async def test_client_errors_are_final(status: int, error: type[LLMServiceError]) -> None:
    with fake_openai(Reply(status=status, error="no")) as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(error):
                await collect(provider)
    assert len(fake.requests) == 1


async def test_a_stream_cut_midway_fails_and_is_not_retried() -> None:
    with fake_openai(Reply(text="one two three four", cut_after=2)) as fake:
        async with provider_for(fake) as provider:
            seen: list[str] = []

            async def consume() -> None:
                async for event in provider.stream("fake-model", HELLO):
                    if isinstance(event, TokenDelta):
                        seen.append(event.text)

            with pytest.raises(Unavailable, match="cut the stream midway"):
                await consume()
    assert "".join(seen) == "one two "
    assert len(fake.requests) == 1


async def test_a_malformed_frame_is_an_error_not_a_crash() -> None:
    with fake_openai(Reply(text="one two three", malformed=True)) as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(Unavailable, match="could not be read"):
                await collect(provider)


async def test_the_key_appears_in_no_error_and_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
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
        with fake_openai(reply) as fake:
            async with provider_for(fake) as provider:
                provider.retry = RetryPolicy(attempts=1)
                with pytest.raises(LLMServiceError) as raised:
                    await collect(provider)
                messages.append(str(raised.value))
                await provider.list_models()
    assert "openai" in messages[0]
    everything = "\n".join(messages) + caplog.text
    fragments = {KEY[i : i + 8] for i in range(len(KEY) - 7)}
    assert not [f for f in fragments if f in everything]


async def test_chat_is_one_non_streaming_call_with_usage() -> None:
    with fake_openai(Reply(status=503, error="busy"), Reply(text="All good")) as fake:
        async with provider_for(fake) as provider:
            completion = await provider.complete("fake-model", HELLO)
    assert (completion.text, completion.finish_reason, completion.provider) == ("All good", "stop", "openai")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 2)
    assert [r["stream"] for r in fake.requests] == [False, False]


async def test_azure_speaks_to_the_deployment_with_its_api_key_header() -> None:
    with fake_openai(Reply(text="From Azure")) as fake:
        settings = AzureOpenAISettings(
            api_key=SecretStr(KEY), endpoint=fake.origin, deployment="gpt-4o-eu", api_version="2024-10-21"
        )
        async with azure_openai_provider(settings) as provider:
            assert provider.default_model == "gpt-4o-eu"
            assert text_of(await collect(provider)) == "From Azure"
    assert fake.deployments == ["gpt-4o-eu"]
    assert fake.headers[0]["api-key"] == KEY
    assert "authorization" not in fake.headers[0]


WEATHER = Tool(
    "get_weather", "Weather for a city", '{"type": "object", "properties": {"city": {"type": "string"}}}'
)


async def test_tools_go_up_and_streamed_tool_calls_come_back() -> None:
    request = ChatRequest(
        (
            Message("user", "Weather in Paris and Rome?"),
            Message("assistant", "", (ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)),
            Message("tool", "cold", tool_call_id="call_0"),
        ),
        tools=(WEATHER,),
        tool_choice=ToolChoice("function", "get_weather"),
    )
    calls = [("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_weather", '{"city": "Rome"}')]
    with fake_openai(Reply(text="Checking", tool_calls=calls)) as fake:
        async with provider_for(fake) as provider:
            events = await collect(provider, request)
            completion = await provider.complete("fake-model", request)
    sent = fake.requests[0]
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                          "parameters": json.loads(WEATHER.parameters)}},
    ]  # fmt: skip
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_0", "content": "cold"}
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert assemble_tool_calls(deltas) == tuple(ToolCall(*c) for c in calls)
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    assert completion.tool_calls == tuple(ToolCall(*c) for c in calls)
    assert completion.finish_reason == "tool_calls"


async def test_logprobs_become_token_signals_marked_as_upstream() -> None:
    request = ChatRequest(HELLO.messages, signals=SignalOptions(top_k=3))
    with fake_openai(Reply(text="one two")) as fake:
        async with provider_for(fake) as provider:
            events = await collect(provider, request)
    assert (fake.requests[0]["logprobs"], fake.requests[0]["top_logprobs"]) == (True, 3)
    tokens = [e for e in events if isinstance(e, TokenDelta)]
    assert [t.text for t in tokens] == ["one ", "two"]
    for token in tokens:
        signal = token.signal
        assert signal is not None
        assert signal.source == "upstream_logprobs"
        assert signal.confidence == pytest.approx(0.8)
        assert [c.prob for c in signal.top_k] == pytest.approx([0.8, 0.1, 0.05])
        assert signal.top_gap == pytest.approx(0.7)
        exact_part = -sum(p * math.log2(p) for p in (0.8, 0.1, 0.05))
        assert signal.entropy == pytest.approx(exact_part)  # the top-k's share: a lower bound
        assert signal.stages == ()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (SignalOptions(sampler_stages=True), "signal_options"),
        (SignalOptions(top_k=21), "signal_options.top_k"),
    ],
)
async def test_signals_logprobs_cannot_give_are_refused(options: SignalOptions, field: str) -> None:
    with fake_openai() as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(InvalidRequest) as raised:
                provider.validate("fake-model", ChatRequest(HELLO.messages, signals=options))
    assert raised.value.field == field
