"""Ollama's native API (`/api/chat`) against the replies Ollama's own docs and tests record.

The fixtures come from ollama/ollama's docs/api.md, docs/api/errors.mdx and its Go server
tests (README.md names each). Ollama takes no key; what it refuses of a request before it
runs a model (no model, a keep-alive Go cannot parse) is in `rules`, which the scripted
fake applies too. `fixtures/admin/` holds the model-list and pull traffic that
tests/integration/test_ollama.py replays (the suite here runs chat only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse, Response

from llmservice.kernel.errors import InvalidRequest, NotFound, ResourceExhausted, Unavailable
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import ChatRequest, Constraint, FinishReason, Message
from llmservice.providers.ollama.provider import OllamaProvider
from llmservice.providers.ollama.settings import OllamaSettings

from ..replay import Received
from ..suite import AFTER_TOOLS, ASK_WEATHER, FORCE_WEATHER, HELLO, WEATHER, Case, Expect, Vendor
from .rules import refusal

DIRECTORY = Path(__file__).parent


def make(url: str) -> Provider:
    return OllamaProvider(OllamaSettings(base_url=url, model="m"))


def gate(received: Received) -> Response | None:
    """Ollama's 400 for a request it would not run, as its handlers word it."""
    try:
        body = received.json()
    except ValueError:
        return None  # the provider sends JSON; Go's syntax errors are not ours to word
    refused = refusal(received.path, body)
    if refused is None:
        return None
    status, message = refused
    return JSONResponse({"error": message}, status_code=status)


# What the checks of the request body (Case.sent) look for.


def _whole(body: Any) -> None:
    assert (body["stream"], body["keep_alive"]) == (False, "5m"), body
    assert body["messages"] == [{"role": "user", "content": "Say hello."}], body["messages"]
    assert not {"tools", "format"} & body.keys(), body


def _streamed(body: Any) -> None:
    assert body["stream"] is True, body


def _offers_the_weather_tool(body: Any) -> None:
    function = {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": json.loads(WEATHER.parameters),
    }
    assert body["tools"] == [{"type": "function", "function": function}], body["tools"]


def _history_names_calls_and_results(body: Any) -> None:
    """The call carries its id, and its result both the id and the tool's name: what Ollama's
    templates match a result to its call by (tool_call_id, or tool_name in older ones)."""
    called, result = body["messages"][1], body["messages"][2]
    assert called["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    ], called
    assert result == {
        "role": "tool",
        "content": "18 degrees and sunny",
        "tool_name": "get_weather",
        "tool_call_id": "call_1",
    }, result
    assert "tools" not in body  # none offered this turn


ANSWER_SCHEMA = '{"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}'
STRUCTURED = ChatRequest(
    (Message("user", "Ollama is 22 years old. Return its age."),),
    constraint=Constraint("json_schema", ANSWER_SCHEMA),
)


def _sends_the_schema_as_format(body: Any) -> None:
    assert body["format"] == json.loads(ANSWER_SCHEMA), body


NO_MESSAGES = ChatRequest(())  # what Ollama answers with done_reason "load" or "unload"


def _sends_no_messages(body: Any) -> None:
    assert body["messages"] == [], body


TOKYO = (("", "get_weather", {"city": "Tokyo"}),)

CASES = (
    # A whole reply; its final object has no done_reason (older servers send none).
    Case(
        "text",
        ("chat",),
        Expect(text="Hello! How are you today?", finish=FinishReason.STOP, calls=1),
        sent=_whole,
    ),
    Case(
        "stream",
        ("chat_stream",),
        Expect(text="The", finish=FinishReason.STOP, calls=1),
        stream=True,
        sent=_streamed,
    ),
    Case("usage", ("chat",), Expect(usage=(26, 298, 0))),
    Case("usage", ("chat_stream",), Expect(usage=(26, 282, 0)), stream=True),
    # Ollama's docs show calls without an id: each gets one of ours.
    Case(
        "tools",
        ("chat_tools",),
        Expect(text="", finish=FinishReason.TOOL_CALLS, tool_calls=TOKYO, usage=(169, 18, 0)),
        request=ASK_WEATHER,
        sent=_offers_the_weather_tool,
    ),
    Case(
        "tools_stream",
        ("chat_tools_stream",),
        Expect(text="", finish=FinishReason.TOOL_CALLS, tool_calls=TOKYO, usage=(169, 15, 0)),
        stream=True,
        request=ASK_WEATHER,
        sent=_offers_the_weather_tool,
    ),
    # Newer servers give each call an id (server/routes.go, toolCallId): it is kept.
    Case(
        "tools_stream",
        ("chat_tools_stream_ids",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            tool_calls=(("call_1", "web_search", {"query": "latest Ollama release"}),),
            usage=(12, 4, 0),
        ),
        stream=True,
        request=ASK_WEATHER,
    ),
    # A history of a call and its result reaches Ollama with what it matches them by.
    Case(
        "tool_results",
        ("chat_after_tools",),
        Expect(text="The current temperature in Toronto is 11°C.", finish=FinishReason.STOP),
        request=AFTER_TOOLS,
        sent=_history_names_calls_and_results,
    ),
    # Ollama has no tool_choice: a forced call is refused before any call is made.
    Case(
        "forced_tool",
        ("chat_tools",),
        Expect(error=InvalidRequest, says=("cannot force",), calls=0),
        request=FORCE_WEATHER,
    ),
    Case(
        "cut_stream",
        ("chat_stream_cut",),
        Expect(text="The", error=Unavailable, says=("ollama",), calls=1),
        stream=True,
    ),
    Case(
        "finish:stop",
        ("chat_structured",),
        Expect(text='{"age": 22, "available": false}', finish=FinishReason.STOP, usage=(34, 12, 0)),
        request=STRUCTURED,
        sent=_sends_the_schema_as_format,
    ),
    Case("finish:length", ("chat_length",), Expect(finish=FinishReason.LENGTH, usage=(26, 298, 0))),
    Case(
        "finish:load",
        ("chat_load",),
        Expect(text="", finish=FinishReason.STOP, usage=(0, 0, 0)),
        request=NO_MESSAGES,
        sent=_sends_no_messages,
    ),
    Case(
        "finish:unload",
        ("chat_unload",),
        Expect(text="", finish=FinishReason.STOP),
        stream=True,
        request=NO_MESSAGES,
        sent=_sends_no_messages,
    ),
    Case(
        "error:400 model is required",
        ("error_model_required",),
        Expect(error=InvalidRequest, says=("ollama", "model is required"), calls=1),
    ),
    Case(
        "error:400 does not support tools",
        ("error_no_tools",),
        Expect(error=InvalidRequest, says=("does not support tools",), calls=1),
        stream=True,
        request=ASK_WEATHER,
    ),
    Case(
        "error:404 model not found",
        ("error_not_found_pull_first",),
        Expect(error=NotFound, says=('model "m" not found, try pulling it first',), calls=1),
    ),
    Case(
        "error:404 model not found",
        ("error_not_found",),
        Expect(error=NotFound, says=("model 'm' not found",), calls=1),
        stream=True,
    ),
    Case(
        "error:429 rate limit exceeded",
        ("error_429",),
        Expect(error=ResourceExhausted, says=("rate limit exceeded",), calls=2),
    ),
    Case(
        "error:429 rate limit exceeded",
        ("error_429", "chat_stream"),
        Expect(text="The", calls=2),
        stream=True,
    ),
    Case(
        "error:500",
        ("error_500",),
        Expect(error=Unavailable, says=("the model failed to generate a response",), calls=2),
        stream=True,
    ),
    Case("error:500", ("error_500", "chat"), Expect(text="Hello! How are you today?", calls=2)),
    Case(
        "error:503 busy or overloaded",
        ("error_503_busy",),
        Expect(error=Unavailable, says=("server busy, please try again",), calls=2),
    ),
    Case(
        "error:503 busy or overloaded",
        ("error_503_overloaded", "chat_stream"),
        Expect(text="The", calls=2),
        stream=True,
    ),
    # Text already reached the caller: the stream fails with Ollama's words, and is not retried.
    Case(
        "error:in-stream error",
        ("chat_stream_error",),
        Expect(
            text=" Yes.Ican",
            error=Unavailable,
            says=("an error was encountered while running the model",),
            calls=1,
        ),
        stream=True,
        request=HELLO,
    ),
)

VENDOR = Vendor(kind="ollama", directory=DIRECTORY, make=make, gate=gate, cases=CASES)
