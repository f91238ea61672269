"""Anthropic's Messages API: its recorded traffic (fixtures/, README.md), what it refuses
(rules.py), and the suite's cases over them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.responses import Response

from llmservice.kernel.errors import (
    InvalidRequest,
    NotFound,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.types import FinishReason, Sampling
from llmservice.providers.anthropic.provider import AnthropicProvider
from llmservice.providers.anthropic.settings import AnthropicSettings

from ..replay import Received
from ..suite import AFTER_TOOLS, ASK_WEATHER, FORCE_WEATHER, HELLO, WEATHER, Case, Expect, Vendor
from .rules import body_refusal, header_refusal

KEY = "sk-ant-api03-replay-key"
# A deployment that sets a default temperature, as ANTHROPIC_TEMPERATURE does: every case
# sends it, unless the request sets its own or asks for top_p.
DEFAULT_TEMPERATURE = 0.5


def make(url: str) -> AnthropicProvider:
    settings = AnthropicSettings(
        api_key=SecretStr(KEY), base_url=url, model="m", temperature=DEFAULT_TEMPERATURE
    )
    return AnthropicProvider(settings)


def gate(received: Received) -> Response | None:
    """Anthropic's refusals: the key and version headers, then the body rules."""
    return header_refusal(received.headers, KEY) or body_refusal(received.json())


def _expect_sent(**fields: Any) -> Any:
    """A check that the body sent holds `fields` as given (None: the field is absent)."""

    def check(body: dict[str, Any]) -> None:
        for name, value in fields.items():
            assert body.get(name) == value, f"{name}: sent {body.get(name)!r}, wanted {value!r}"

    return check


def _hello_as_anthropic_takes_it(body: dict[str, Any]) -> None:
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
    assert body["max_tokens"] == 4096
    assert body["temperature"] == DEFAULT_TEMPERATURE
    assert not {"metadata", "top_p", "stream"} & body.keys()


def _weather_tool_sent(body: dict[str, Any]) -> None:
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": WEATHER.description,
            "input_schema": json.loads(WEATHER.parameters),
        }
    ]


def _history_tools_declared(body: dict[str, Any]) -> None:
    """No tool offered this turn, but the history calls one: Anthropic reads tool blocks
    only beside `tools`, so the called tool is declared, and `none` keeps it uncalled."""
    assert [t["name"] for t in body["tools"]] == ["get_weather"]
    assert body["tool_choice"] == {"type": "none"}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]


WEATHER_IN_SF = {"location": "San Francisco, CA", "units": "f"}
TOP_P = replace(HELLO, sampling=Sampling(top_p=0.9))
BOTH = replace(HELLO, sampling=Sampling(temperature=0.2, top_p=0.9))
OWN_TEMPERATURE = replace(HELLO, sampling=Sampling(temperature=0.2))
STOP_AT_END = replace(HELLO, sampling=Sampling(stop=("END",)))
ONE_CALL_AT_A_TIME = replace(ASK_WEATHER, parallel_tool_calls=False)
FROM_A_USER = replace(HELLO, user="user-4b1d")
GUIDE_TEXT = "Here's the answer to your question..."

CORE = (
    Case(
        "text",
        ("message",),
        Expect(
            text='{"product_name": "Green Tea", "price": 5.50, "quantity": 2}',
            finish=FinishReason.STOP,
            usage=(249, 26, 0),
        ),
        sent=_hello_as_anthropic_takes_it,
    ),
    Case(  # as recorded: two 429s (x-should-retry: true), then the stream
        "stream",
        ("rate_limit_error", "rate_limit_error", "stream"),
        Expect(text="[12345,67890]", finish=FinishReason.STOP, usage=(135, 10, 0), calls=3),
        stream=True,
        attempts=3,
        sent=_expect_sent(stream=True),
    ),
    Case(
        "tools",
        ("message_tool_use",),
        Expect(
            text="I'll get the weather for each of those cities. Let me start by checking San Francisco.",
            finish=FinishReason.TOOL_CALLS,
            usage=(701, 93, 0),
            tool_calls=(("toolu_01LRanfq6DmHn1yDTB4d1SAh", "get_weather", WEATHER_IN_SF),),
        ),
        request=ASK_WEATHER,
        sent=_weather_tool_sent,
    ),
    Case(
        "tools_stream",
        ("tool_use_response",),
        Expect(
            text="I'll check the current weather in Paris for you.",
            finish=FinishReason.TOOL_CALLS,
            usage=(377, 65, 0),
            tool_calls=(("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", {"location": "Paris"}),),
        ),
        stream=True,
        request=ASK_WEATHER,
    ),
    Case(
        "forced_tool",
        ("message_forced_tool_use",),
        Expect(
            text="",
            finish=FinishReason.TOOL_CALLS,
            tool_calls=(("toolu_01A9HHF5Ezy3oBrKmSgfASm9", "get_weather", WEATHER_IN_SF),),
        ),
        request=FORCE_WEATHER,
        sent=_expect_sent(tool_choice={"type": "tool", "name": "get_weather"}),
    ),
    Case(
        "forced_tool",
        ("tool_use_response",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=(("", "get_weather", {"location": "Paris"}),)),
        stream=True,
        request=FORCE_WEATHER,
        sent=_expect_sent(tool_choice={"type": "tool", "name": "get_weather"}),
    ),
    Case(  # the model began, then refused: the words it wrote are kept
        "refusal",
        ("refusal_after_text",),
        Expect(text="Hi", finish=FinishReason.CONTENT_FILTER, usage=(28, 106, 0)),
        stream=True,
    ),
    Case(  # message_delta's usage is cumulative: its cache counts replace message_start's
        "usage",
        ("message_delta_fields_response",),
        Expect(text="Hello there!", finish=FinishReason.STOP, usage=(40 + 12 + 7, 8, 7)),
        stream=True,
    ),
    Case(  # message_start without usage: the input tokens come in message_delta
        "usage",
        ("usage_omitted_response",),
        Expect(text="Hello", usage=(12, 6, 0)),
        stream=True,
    ),
    Case(  # message_delta with output tokens only: message_start's input and cache counts stand
        "usage",
        ("message_delta_omitted_usage_response",),
        Expect(usage=(25 + 10 + 5, 8, 5)),
        stream=True,
    ),
    Case(
        "cut_stream",
        ("cut_stream",),
        Expect(text="Hello there", error=Unavailable, calls=1),
        stream=True,
        attempts=3,
    ),
)

FINISH = (
    Case(
        "finish:end_turn",
        ("basic_response",),
        Expect(text="Hello there!", finish=FinishReason.STOP, usage=(11, 6, 0)),
        stream=True,
    ),
    Case(  # cut at max_tokens inside a tool call's arguments
        "finish:max_tokens",
        ("max_tokens_response",),
        Expect(
            text=(
                "I'll create a comprehensive tax guide for someone with multiple W2s and save it "
                "in a file called taxes.txt. Let me do that for you now."
            ),
            finish=FinishReason.LENGTH,
            usage=(450, 124, 0),
        ),
        stream=True,
    ),
    Case(
        "finish:stop_sequence",
        ("message_stop_sequence",),
        Expect(text=GUIDE_TEXT, finish=FinishReason.STOP, usage=(100, 50, 0)),
        request=STOP_AT_END,
        sent=_expect_sent(stop_sequences=["END"]),
    ),
    Case(
        "finish:tool_use",
        ("message_tool_use",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=(("", "get_weather", WEATHER_IN_SF),)),
        request=ONE_CALL_AT_A_TIME,
        sent=_expect_sent(tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
    ),
    Case(
        "finish:pause_turn",
        ("message_pause_turn",),
        Expect(text=GUIDE_TEXT, finish=FinishReason.STOP),
    ),
    Case(
        "finish:refusal",
        ("message_refusal",),
        Expect(text="I cannot provide that.", finish=FinishReason.CONTENT_FILTER, usage=(1, 1, 0)),
    ),
    Case(  # refused before a word: stop_details says why, the text is empty
        "finish:refusal",
        ("refusal_response",),
        Expect(text="", finish=FinishReason.CONTENT_FILTER, usage=(20, 0, 0)),
        stream=True,
    ),
    Case(
        "finish:model_context_window_exceeded",
        ("message_context_window_exceeded",),
        Expect(text=GUIDE_TEXT, finish=FinishReason.LENGTH),
    ),
)

ERRORS = (
    Case(
        "error:400 invalid_request_error",
        ("invalid_request_error",),
        Expect(error=InvalidRequest, says=("HTTP 400", "unexpected `tool_use_id`"), calls=1),
        attempts=3,
    ),
    Case(
        "error:401 authentication_error",
        ("authentication_error",),
        Expect(error=ProviderAuthFailed, says=("rejected the service's credentials", "HTTP 401"), calls=1),
        attempts=3,
    ),
    Case(
        "error:402 billing_error",
        ("billing_error",),
        Expect(error=ProviderAuthFailed, says=("HTTP 402", "Billing error"), calls=1),
        attempts=3,
    ),
    Case(
        "error:403 permission_error",
        ("permission_error",),
        Expect(error=ProviderAuthFailed, says=("HTTP 403",), calls=1),
        attempts=3,
    ),
    Case(
        "error:404 not_found_error",
        ("not_found_error",),
        Expect(error=NotFound, says=("model 'm'", "Not found"), calls=1),
        attempts=3,
    ),
    Case(
        "error:413 request_too_large",
        ("request_too_large",),
        Expect(error=InvalidRequest, says=("HTTP 413", "maximum allowed number of bytes"), calls=1),
        attempts=3,
    ),
    Case(
        "error:429 rate_limit_error",
        ("rate_limit_error",),
        Expect(error=ResourceExhausted, says=("rate limiting", "prompt bytes per hour"), calls=2),
    ),
    Case(
        "error:500 api_error",
        ("api_error", "message"),
        Expect(finish=FinishReason.STOP, calls=2),
    ),
    Case(
        "error:504 timeout_error",
        ("timeout_error",),
        Expect(error=ProviderTimeout, says=("HTTP 504", "Request timeout"), calls=2),
    ),
    Case(  # a 529 before the stream: UNAVAILABLE, retried
        "error:529 overloaded_error",
        ("overloaded_error", "basic_response"),
        Expect(text="Hello there!", finish=FinishReason.STOP, calls=2),
        stream=True,
    ),
    Case(
        "error:529 overloaded_error",
        ("overloaded_error",),
        Expect(error=Unavailable, says=("HTTP 529", "Overloaded"), calls=2),
    ),
    Case(  # overloaded in the stream, once text has reached the caller: final
        "error:event: error",
        ("error_event_after_text",),
        Expect(
            text="Hello there",
            error=Unavailable,
            says=("failed midway", "overloaded_error: Overloaded"),
            calls=1,
        ),
        stream=True,
        attempts=3,
    ),
    Case(  # overloaded in the stream before a token: retried
        "error:event: error",
        ("error_event_first", "basic_response"),
        Expect(text="Hello there!", finish=FinishReason.STOP, calls=2),
        stream=True,
    ),
    Case(  # an error event of a request's fault reads as that error before the stream: not retried
        "stream_error:invalid_request_error",
        ("error_event_invalid_request", "basic_response"),
        Expect(error=InvalidRequest, says=("HTTP 400", "prompt is too long"), calls=1),
        stream=True,
        attempts=3,
    ),
    Case(  # a 5xx Anthropic says not to retry: one call
        "error:x-should-retry",
        ("overloaded_error_no_retry",),
        Expect(error=Unavailable, says=("HTTP 529",), calls=1),
        attempts=3,
    ),
    Case(
        "error:x-should-retry",
        ("overloaded_error_no_retry",),
        Expect(error=Unavailable, says=("HTTP 529",), calls=1),
        stream=True,
        attempts=3,
    ),
)

REQUESTS = (
    Case(  # top_p alone: the deployment's default temperature stays home
        "sampling:top_p",
        ("message",),
        Expect(finish=FinishReason.STOP),
        request=TOP_P,
        sent=_expect_sent(top_p=0.9, temperature=None),
    ),
    Case(
        "sampling:top_p",
        ("basic_response",),
        Expect(text="Hello there!"),
        stream=True,
        request=TOP_P,
        sent=_expect_sent(top_p=0.9, temperature=None),
    ),
    Case(  # both asked for: sent as asked; a newer model's 400 reaches the caller in its words
        "sampling:temperature+top_p",
        ("message",),
        Expect(error=InvalidRequest, says=("`temperature` and `top_p` cannot both be specified",), calls=0),
        request=BOTH,
        sent=_expect_sent(temperature=0.2, top_p=0.9),
    ),
    Case(
        "sampling:temperature",
        ("message",),
        Expect(finish=FinishReason.STOP),
        request=OWN_TEMPERATURE,
        sent=_expect_sent(temperature=0.2, top_p=None),
    ),
    Case(
        "user",
        ("message",),
        Expect(finish=FinishReason.STOP),
        request=FROM_A_USER,
        sent=_expect_sent(metadata={"user_id": "user-4b1d"}),
    ),
    Case(
        "after_tools",
        ("message",),
        Expect(finish=FinishReason.STOP),
        request=AFTER_TOOLS,
        sent=_history_tools_declared,
    ),
    Case(
        "after_tools",
        ("basic_response",),
        Expect(text="Hello there!"),
        stream=True,
        request=AFTER_TOOLS,
        sent=_history_tools_declared,
    ),
)

VENDOR = Vendor(
    kind="anthropic",
    directory=Path(__file__).parent,
    make=make,
    gate=gate,
    cases=(*CORE, *FINISH, *ERRORS, *REQUESTS),
)
