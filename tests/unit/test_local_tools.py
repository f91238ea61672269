"""Tool calling for models without a tool format: the reply schema, plain turns, the hand-off."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest

from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.types import (
    ChatRequest,
    FinishReason,
    Message,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from llmservice.providers.llamacpp import tools

WEATHER = Tool("get_weather", "Weather", '{"type": "object", "properties": {"city": {"type": "string"}}}')
TIME = Tool("get_time", "Time", '{"type": "object", "properties": {}}')


def request(choice: ToolChoice | None = None) -> ChatRequest:
    return ChatRequest((Message("user", "Weather in Paris?"),), tools=(WEATHER, TIME), tool_choice=choice)


def test_auto_allows_calls_or_an_answer_required_only_calls_function_only_that_one() -> None:
    auto = tools.reply_schema(request())
    assert [set(branch["required"]) for branch in auto["oneOf"]] == [{"tool_calls"}, {"content"}]
    required = tools.reply_schema(request(ToolChoice("required")))
    assert required["required"] == ["tool_calls"]
    only = tools.reply_schema(request(ToolChoice("function", "get_time")))
    names = [b["properties"]["name"]["const"] for b in only["properties"]["tool_calls"]["items"]["oneOf"]]
    assert names == ["get_time"]


def test_tool_turns_become_plain_turns() -> None:
    turns = tools.plain_turns(
        (
            Message("user", "Weather?"),
            Message("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Oslo"}'),)),
            Message("tool", "cold", tool_call_id="c1"),
        )
    )
    assert turns[1] == Message(
        "assistant", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}'
    )
    assert turns[2] == Message("user", "Result of get_weather: cold")


def test_without_tools_to_call_past_calls_are_told_in_words() -> None:
    # So a reply with tool_choice "none" answers instead of imitating the call's JSON.
    turns = tools.plain_turns(
        (Message("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Oslo"}'),)),), calls_as_json=False
    )
    assert turns == (Message("assistant", 'I called get_weather with {"city": "Oslo"}.'),)


def test_the_engine_request_carries_the_catalogue_and_the_constraint() -> None:
    engine = tools.with_tools(request())
    assert engine.messages[0].role == "system"
    assert "get_weather" in engine.messages[0].content
    assert engine.tools == ()
    assert engine.constraint is not None
    assert json.loads(engine.constraint.text) == tools.reply_schema(request())


def fake(text: str, reason: FinishReason = FinishReason.STOP):  # type: ignore[no-untyped-def]
    async def generate(_: ChatRequest) -> AsyncGenerator[StreamEvent]:
        for i in range(0, len(text), 5):
            yield TokenDelta(text[i : i + 5])
        yield StreamEnd(reason, Usage(10, 20))

    return generate


async def test_a_tool_call_reply_becomes_tool_call_events() -> None:
    reply = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
    events = [e async for e in tools.call_tools(fake(reply), request())]
    call = events[0]
    assert isinstance(call, ToolCallDelta)
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert call.id.startswith("call_")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == FinishReason.TOOL_CALLS


async def test_an_answer_streams_and_a_cut_reply_is_never_raw_json() -> None:
    answer = [e async for e in tools.call_tools(fake('{"content": "It is sunny."}'), request())]
    assert "".join(e.text for e in answer if isinstance(e, TokenDelta)) == "It is sunny."
    assert len([e for e in answer if isinstance(e, TokenDelta)]) > 1  # piece by piece, as decoded
    assert answer[-1] == StreamEnd(FinishReason.STOP, Usage(10, 20))
    cut = [e async for e in tools.call_tools(fake('{"content": "It is su', FinishReason.LENGTH), request())]
    assert "".join(e.text for e in cut if isinstance(e, TokenDelta)) == "It is su"
    assert cut[-1] == StreamEnd(FinishReason.LENGTH, Usage(10, 20))
    with pytest.raises(InvalidRequest, match="max_tokens"):
        _ = [e async for e in tools.call_tools(fake('{"tool_calls": [{"na', FinishReason.LENGTH), request())]
