"""OpenAI's Chat Completions API against the traffic OpenAI's own SDKs recorded.

The fixtures come from openai/openai-python's inline snapshots (bodies and streams its
tests recorded from the live API) and openai/openai-dotnet's session records (whole
request/response pairs, errors included); the errors neither holds are OpenAI's answers
as posted in public issues (README.md names each). What OpenAI refuses of a request
before a model runs (no Bearer key, a key it does not know, `max_tokens` to a reasoning
model) is in `rules`, which the scripted fake applies too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.responses import Response

from llmservice.kernel.errors import (
    InvalidRequest,
    NotFound,
    ProviderAuthFailed,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import ChatRequest, FinishReason, Message, Sampling, Tool, ToolChoice
from llmservice.providers.openai_family.provider import openai_provider
from llmservice.providers.openai_family.settings import OpenAISettings

from ..replay import Received
from ..suite import ASK_WEATHER, FORCE_WEATHER, HELLO, Case, Expect, Vendor
from .rules import body_refusal, header_refusal

DIRECTORY = Path(__file__).parent
KEY = "sk-replay-0123456789abcdefghijklmnop"
MODEL = "gpt-4o-mini"
REASONING = "o3-mini"  # a reasoning model: it refuses `max_tokens`


def make(url: str) -> Provider:
    return openai_provider(OpenAISettings(api_key=SecretStr(KEY), base_url=url + "/v1", model=MODEL))


def gate(received: Received) -> Response | None:
    """OpenAI's 401 for a key it does not take, and its 400 for a body it refuses."""
    refused = header_refusal(received.headers, KEY)
    if refused is not None or not received.path.endswith("/chat/completions"):
        return refused
    return body_refusal(received.json())


# The requests of the cases beyond the suite's, as the recordings asked.

# ChatToolTests.ConstraintsWork forced this tool (openai-dotnet's session record).
NUMBER = Tool(
    "get_number_for_word",
    "gets an arbitrary number assigned to a given word",
    '{"type": "object", "properties": {"word": {"type": "string"}}}',
)
FORCE_NUMBER = ChatRequest(
    (Message("user", "What's the number for the word 'banana'?"),),
    tools=(NUMBER,),
    tool_choice=ToolChoice("function", "get_number_for_word"),
)
THEMES = ChatRequest(  # ChatTests.ReasoningTokensWork asked o3-mini this, capped at 2148 tokens
    (
        Message(
            "user",
            "Using a comprehensive evaluation of popular media in the 1970s and 1980s, "
            "what were the most common sci-fi themes?",
        ),
    ),
    sampling=Sampling(max_tokens=2148),
)
FROM_A_USER = ChatRequest(HELLO.messages, user="user-1234")


# What the checks of the request body (Case.sent) look for.


def _caps_with_max_completion_tokens(body: Any) -> None:
    """The token cap goes as `max_completion_tokens`, the only name reasoning models take."""
    assert body["max_completion_tokens"] == 2148, body
    assert "max_tokens" not in body, body


def _forces(name: str) -> Any:
    def check(body: Any) -> None:
        assert body["tool_choice"] == {"type": "function", "function": {"name": name}}, body

    return check


def _names_the_user(body: Any) -> None:
    assert body["user"] == "user-1234", body


def _streams_with_usage(body: Any) -> None:
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True}), body


def _offers_the_weather_tool_strictly_as_asked(body: Any) -> None:
    function = body["tools"][0]["function"]
    assert (function["name"], function["parameters"]) == (
        "get_weather",
        json.loads(ASK_WEATHER.tools[0].parameters),
    )


STREAMED = (
    "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, "
    "I recommend checking a reliable weather website or a weather app."
)
SF = (("call_CTf1nWJLqSeRgDqaCG27xZ74", "get_weather", {"city": "San Francisco", "state": "CA"}),)
BANANA = (("call_367XCv5N6u1Sp2TWLlP9xoRU", "get_number_for_word", {"word": "banana"}),)

CASES = (
    Case(
        "text",
        ("text",),
        Expect(
            text="Hello! How can I assist you today?", finish=FinishReason.STOP, usage=(11, 9, 0), calls=1
        ),
    ),
    Case(
        "stream",
        ("stream",),
        Expect(text=STREAMED, finish=FinishReason.STOP, usage=(14, 30, 0), calls=1),
        stream=True,
        sent=_streams_with_usage,
    ),
    Case(
        "tools",
        ("tools",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            usage=(48, 19, 0),
            tool_calls=(
                ("call_CUdUoJpsWWVdxXntucvnol1M", "get_weather", {"city": "San Francisco", "state": "CA"}),
            ),
        ),
        request=ASK_WEATHER,
        sent=_offers_the_weather_tool_strictly_as_asked,
    ),
    Case(
        "tools_stream",
        ("tools_stream",),
        Expect(finish=FinishReason.TOOL_CALLS, usage=(48, 19, 0), tool_calls=SF),
        stream=True,
        request=ASK_WEATHER,
    ),
    # A forced (named) tool_choice: OpenAI says `stop`, though the reply is the tool call.
    Case(
        "forced_tool",
        ("forced_tool",),
        Expect(text="", finish=FinishReason.TOOL_CALLS, usage=(69, 5, 0), tool_calls=BANANA),
        request=FORCE_NUMBER,
        sent=_forces("get_number_for_word"),
    ),
    Case(
        "forced_tool",
        ("forced_tool_stream",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SF),
        stream=True,
        request=FORCE_WEATHER,
        sent=_forces("get_weather"),
    ),
    # A refusal comes as `refusal`, content null, finish `stop`: the caller gets its words,
    # and a finish that does not pass it off as an answer.
    Case(
        "refusal",
        ("refusal",),
        Expect(text="I'm very sorry, but I can't assist with that.", finish=FinishReason.CONTENT_FILTER),
    ),
    Case(
        "refusal",
        ("refusal_stream",),
        Expect(
            text="I'm sorry, I can't assist with that request.",
            finish=FinishReason.CONTENT_FILTER,
            usage=(79, 11, 0),
        ),
        stream=True,
    ),
    # o3-mini refuses `max_tokens` (the gate answers as OpenAI does); its usage counts reasoning.
    Case(
        "usage",
        ("reasoning",),
        Expect(finish=FinishReason.STOP, usage=(34, 863, 0), calls=1),
        request=THEMES,
        model=REASONING,
        sent=_caps_with_max_completion_tokens,
    ),
    Case(  # the same request streamed (answered with the recorded gpt-4o stream: only the body matters)
        "max_completion_tokens",
        ("stream",),
        Expect(finish=FinishReason.STOP, calls=1),
        stream=True,
        request=THEMES,
        model=REASONING,
        sent=_caps_with_max_completion_tokens,
    ),
    Case(
        "cut_stream",
        ("cut_stream",),
        Expect(text="I'm unable to provide real-time weather", error=Unavailable, says=("midway",), calls=1),
        stream=True,
    ),
    Case("user", ("text",), Expect(finish=FinishReason.STOP), request=FROM_A_USER, sent=_names_the_user),
    Case(
        "user",
        ("stream",),
        Expect(finish=FinishReason.STOP),
        stream=True,
        request=FROM_A_USER,
        sent=_names_the_user,
    ),
    # Every finish reason of the API reference.
    Case("finish:stop", ("text",), Expect(finish=FinishReason.STOP)),
    Case("finish:length", ("length",), Expect(text='{"', finish=FinishReason.LENGTH, usage=(79, 1, 0))),
    Case("finish:length", ("length_stream",), Expect(text='{"', finish=FinishReason.LENGTH), stream=True),
    Case("finish:tool_calls", ("tools",), Expect(finish=FinishReason.TOOL_CALLS), request=ASK_WEATHER),
    Case(  # the deprecated `functions` API's one call, which has no id: named after the reply
        "finish:function_call",
        ("function_call",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            tool_calls=(
                (
                    "chatcmpl-CGSWsVpKwCAOQwKD6cN2nQIMtPUrF-function_call",
                    "get_favorite_color_for_month",
                    {"month_name": "February"},
                ),
            ),
        ),
    ),
    # Every error of the wire facts, with OpenAI's recorded bodies.
    Case(
        "error:400 invalid_request_error",
        ("error_400",),
        Expect(
            error=InvalidRequest,
            says=("Invalid schema for function 'get_favorite_color_for_day_of_week'",),
            calls=1,
        ),
    ),
    Case(
        "error:401 invalid_api_key",
        ("error_401",),
        Expect(error=ProviderAuthFailed, says=("rejected the service's credentials",), calls=1),
    ),
    Case(
        "error:403 unsupported_country_region_territory",
        ("error_403",),
        Expect(error=ProviderAuthFailed, says=("HTTP 403",), calls=1),
    ),
    Case(
        "error:404 model_not_found",
        ("error_404",),
        Expect(error=NotFound, says=("does not exist or you do not have access to it",), calls=1),
    ),
    Case(  # one try only: a retry would wait the 27 s it asks
        "error:429 rate_limit_exceeded",
        ("error_429",),
        Expect(error=ResourceExhausted, says=("Rate limit reached",), retry_after_s=27.0, calls=1),
        attempts=1,
    ),
    Case(
        "error:429 insufficient_quota",
        ("error_429_quota", "text"),
        Expect(error=ResourceExhausted, says=("You exceeded your current quota",), calls=1),
    ),
    Case(
        "error:500 server_error",
        ("error_500", "text"),
        Expect(text="Hello! How can I assist you today?", finish=FinishReason.STOP, calls=2),
    ),
    Case(
        "error:500 server_error",
        ("error_500",),
        Expect(error=Unavailable, says=("HTTP 500", "The server had an error"), calls=2),
        stream=True,
    ),
    Case(
        "error:503 overloaded",
        ("error_503",),
        Expect(error=Unavailable, says=("HTTP 503", "currently overloaded"), calls=2),
    ),
    Case(  # a 5xx is retried, but not when OpenAI says not to
        "error:x-should-retry",
        ("error_500_no_retry", "text"),
        Expect(error=Unavailable, says=("HTTP 500",), calls=1),
    ),
)

VENDOR = Vendor("openai", DIRECTORY, make, gate, CASES, model=MODEL)
