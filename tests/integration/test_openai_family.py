"""What is particular to the OpenAI family: its request body, Azure's paths, logprobs as signals.

What every backend must do is in test_provider_conformance.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from types import ModuleType

import pytest
from pydantic import SecretStr

from llmservice.kernel.errors import (
    InvalidRequest,
    NotFound,
)
from llmservice.kernel.types import (
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
from llmservice.providers.openai_family.provider import (
    OpenAIFamilyProvider,
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

from ..fakes.openai_server import Reply, fake_openai
from ..fakes.upstream import Upstream
from ..vendors import azure_openai as azure_vendor
from ..vendors import openai as openai_vendor
from ..vendors.azure_openai import rules as azure_rules
from ..vendors.openai import rules as openai_rules
from ..vendors.replay import Received

KEY = "sk-test-LEAKCANARY-0123456789abcdef"
HELLO = ChatRequest((Message("user", "Say hello."),))


@contextlib.asynccontextmanager
async def provider_for(fake: Upstream) -> AsyncIterator[OpenAIFamilyProvider]:
    provider = openai_provider(
        OpenAISettings(api_key=SecretStr(KEY), base_url=fake.url + "/v1", model="fake-model")
    )
    provider.retry = RetryPolicy(attempts=3, base_s=0.01)
    async with provider:
        yield provider


async def collect(provider: OpenAIFamilyProvider, request: ChatRequest = HELLO) -> list[StreamEvent]:
    return [event async for event in provider.stream("fake-model", request)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


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
    assert (
        sent["temperature"],
        sent["top_p"],
        sent["max_completion_tokens"],
        sent["stop"],
        sent["seed"],
    ) == (
        0.3,
        0.9,
        7,
        ["END"],
        4,
    )
    assert "max_tokens" not in sent  # deprecated for chat, and refused by reasoning models


CAPPED = ChatRequest(HELLO.messages, sampling=Sampling(max_tokens=7))


async def test_the_token_cap_goes_by_the_name_each_kind_of_upstream_reads() -> None:
    """OpenAI and Azure take `max_completion_tokens` (their reasoning models no other name);
    servers that speak the API keep `max_tokens`, as does the legacy API's raw prompt."""
    with fake_openai() as fake:
        azure = AzureOpenAISettings(api_key=SecretStr(KEY), endpoint=fake.url, deployment="fake-model")
        compatible = OpenAICompatibleSettings(base_url=fake.url + "/v1", model="fake-model")
        async with (
            provider_for(fake) as openai,
            azure_openai_provider(azure) as az,
            openai_compatible_provider(compatible) as other,
        ):
            for provider in (openai, az, other):
                await provider.complete("fake-model", CAPPED)
            await openai.complete("fake-model", ChatRequest((), sampling=CAPPED.sampling, raw_prompt="Once"))
    caps = [{k: v for k, v in body.items() if k.startswith("max_")} for body in fake.requests]
    assert caps == [
        {"max_completion_tokens": 7},
        {"max_completion_tokens": 7},
        {"max_tokens": 7},
        {"max_tokens": 7},
    ]


async def test_the_fake_refuses_max_tokens_to_a_reasoning_model_in_openais_words() -> None:
    """The rule is the vendor gate's (tests/vendors/openai/rules.py): a server that merely
    speaks the API is sent `max_tokens`, which OpenAI's reasoning models refuse."""
    with fake_openai() as fake:
        settings = OpenAICompatibleSettings(base_url=fake.url + "/v1", model="o3-mini")
        async with openai_compatible_provider(settings) as provider:
            with pytest.raises(InvalidRequest, match="Use 'max_completion_tokens' instead"):
                await provider.complete("o3-mini", CAPPED)
            async with provider_for(fake) as openai:
                assert (await openai.complete("o3-mini", CAPPED)).text == "Hello there"
    assert fake.requests == [fake.requests[0]]  # the refused call never reached the script
    assert fake.requests[0]["max_completion_tokens"] == 7


async def test_a_parameter_openai_lacks_is_refused() -> None:
    with fake_openai() as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(InvalidRequest, match="top_k"):
                provider.validate("fake-model", ChatRequest(HELLO.messages, sampling=Sampling(top_k=5)))


@pytest.mark.parametrize("field", ["top_k", "min_p", "repetition_penalty"])
async def test_openai_and_azure_refuse_the_sampling_parameters_they_lack(field: str) -> None:
    request = ChatRequest(HELLO.messages, sampling=Sampling(**{field: 0.5 if field != "top_k" else 5}))
    with fake_openai() as fake:
        azure = AzureOpenAISettings(api_key=SecretStr(KEY), endpoint=fake.url, deployment="fake-model")
        async with provider_for(fake) as openai, azure_openai_provider(azure) as az:
            for provider in (openai, az):
                with pytest.raises(InvalidRequest) as raised:
                    provider.validate("fake-model", request)
                assert raised.value.field == field


@pytest.mark.parametrize(
    ("flavour", "sent"),
    [
        ("vllm", {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2}),
        ("openrouter", {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2}),
        ("llamacpp", {"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.2}),
        ("lmstudio", {"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.2}),
    ],
)
async def test_each_server_flavour_gets_the_repetition_penalty_under_its_own_name(
    flavour: str, sent: dict[str, float]
) -> None:
    request = ChatRequest(HELLO.messages, sampling=Sampling(top_k=5, min_p=0.1, repetition_penalty=1.2))
    with fake_openai() as fake:
        settings = OpenAICompatibleSettings(base_url=fake.url + "/v1", model="fake-model", flavour=flavour)  # type: ignore[arg-type]
        async with openai_compatible_provider(settings) as provider:
            provider.validate("fake-model", request)
            await collect(provider, request)
            await provider.complete("fake-model", request)
    for body in fake.requests:
        extras = {k: body[k] for k in ("top_k", "min_p", "repetition_penalty", "repeat_penalty") if k in body}
        assert extras == sent


@pytest.mark.parametrize("flavour", ["generic", "tgi"])
async def test_a_server_of_unknown_or_plain_flavour_is_sent_no_extras_they_are_refused(flavour: str) -> None:
    with fake_openai() as fake:
        settings = OpenAICompatibleSettings(base_url=fake.url + "/v1", model="fake-model", flavour=flavour)  # type: ignore[arg-type]
        async with openai_compatible_provider(settings) as provider:
            with pytest.raises(InvalidRequest) as raised:
                provider.validate(
                    "fake-model", ChatRequest(HELLO.messages, sampling=Sampling(repetition_penalty=1.1))
                )
    assert raised.value.field == "repetition_penalty"
    if flavour == "generic":
        assert "openai_compatible.flavour" in raised.value.message


async def test_azure_serves_its_deployment_and_no_other_model() -> None:
    with fake_openai() as fake:
        settings = AzureOpenAISettings(api_key=SecretStr(KEY), endpoint=fake.url, deployment="gpt-4o-eu")
        async with azure_openai_provider(settings) as provider:
            provider.validate("gpt-4o-eu", HELLO)
            with pytest.raises(NotFound, match="gpt-4o-mini"):
                provider.validate("gpt-4o-mini", HELLO)
            assert [m.id for m in await provider.list_models()] == ["gpt-4o-eu"]
    assert fake.paths == []  # the listing did not offer the upstream's base models


async def test_azure_speaks_to_the_deployment_with_its_api_key_header() -> None:
    with fake_openai(Reply(text="From Azure")) as fake:
        settings = AzureOpenAISettings(
            api_key=SecretStr(KEY), endpoint=fake.url, deployment="gpt-4o-eu", api_version="2024-10-21"
        )
        async with azure_openai_provider(settings) as provider:
            assert provider.default_model == "gpt-4o-eu"
            assert text_of(await collect(provider)) == "From Azure"
    assert fake.paths == ["/openai/deployments/gpt-4o-eu/chat/completions"]
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
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": json.loads(WEATHER.parameters),
            },
        },
    ]
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


@pytest.mark.parametrize(
    "reply",
    [Reply(text="split over lines", multiline=True), Reply(text="as content parts", array_content=True)],
    ids=["multi-line data", "array-shaped content"],
)
async def test_streams_and_replies_in_every_shape_the_api_allows(reply: Reply) -> None:
    with fake_openai(reply) as fake:
        async with provider_for(fake) as provider:
            events = await collect(provider)
            completion = await provider.complete("fake-model", HELLO)
    assert "".join(e.text for e in events if isinstance(e, TokenDelta)) == reply.text
    assert completion.text == reply.text


def _received(
    path: str, headers: dict[str, str], body: dict[str, object], query: Mapping[str, str] = {}
) -> Received:
    return Received("POST", path, dict(query), headers, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("vendor", "received", "status", "error"),
    [
        (
            openai_vendor,
            _received("/v1/chat/completions", {}, {"model": "gpt-4o-mini"}),
            401,
            {
                "message": openai_rules.KEY_MISSING,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
        ),
        (
            openai_vendor,
            _received(
                "/v1/chat/completions", {"authorization": "Bearer sk-not-the-key-at-all"}, {"model": "m"}
            ),
            401,
            {
                "message": "Incorrect API key provided: sk-not-t*********-all. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            },
        ),
        (
            openai_vendor,
            _received(
                "/v1/chat/completions",
                {"authorization": f"Bearer {openai_vendor.KEY}"},
                {"model": "o4-mini", "max_tokens": 5},
            ),
            400,
            {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "unsupported_parameter",
            },
        ),
        (
            azure_vendor,
            _received("/openai/deployments/o3-mini/chat/completions", {"api-key": azure_vendor.KEY}, {}),
            404,
            {"code": "404", "message": "Resource not found"},
        ),
        (
            azure_vendor,
            _received("/openai/deployments/o3-mini/chat/completions", {}, {}, {"api-version": "2024-10-21"}),
            401,
            {"code": "401", "message": azure_rules.KEY_REFUSED},
        ),
        (
            azure_vendor,
            _received(
                "/openai/deployments/gpt-4o/chat/completions",
                {"api-key": azure_vendor.KEY},
                {},
                {"api-version": "2024-10-21"},
            ),
            404,
            {"code": "DeploymentNotFound", "message": azure_rules.DEPLOYMENT_NOT_FOUND},
        ),
    ],
    ids=[
        "openai no key",
        "openai unknown key",
        "openai max_tokens to o4-mini",
        "azure no api-version",
        "azure no api-key",
        "azure unknown deployment",
    ],
)
def test_the_vendor_gates_refuse_in_the_vendors_own_words(
    vendor: ModuleType, received: Received, status: int, error: dict[str, object]
) -> None:
    response = vendor.gate(received)
    assert response is not None
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {"error": error}


def test_the_vendor_gates_let_the_providers_own_requests_through() -> None:
    openai_call = _received(
        "/v1/chat/completions",
        {"authorization": f"Bearer {openai_vendor.KEY}"},
        {"model": "o3-mini", "max_completion_tokens": 5},
    )
    azure_call = _received(
        "/openai/deployments/o3-mini/chat/completions",
        {"api-key": azure_vendor.KEY},
        {"model": "o3-mini", "max_completion_tokens": 5},
        {"api-version": "2024-10-21"},
    )
    assert openai_vendor.gate(openai_call) is None
    assert azure_vendor.gate(azure_call) is None
