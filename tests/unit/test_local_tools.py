"""Tool calling for models without a tool format: the reply schema, plain turns, the hand-off."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable

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
from llmservice.providers.llamacpp.engine import Delivery, Job
from llmservice.providers.llamacpp.sampling import SamplerConfig

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
    # So a reply to a request with no tools (hence no grammar) does not imitate the call's JSON.
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


class _NoSink:
    def post(self, deliveries: list[Delivery]) -> None:
        pass


def fake(text: str, reason: FinishReason = FinishReason.STOP, *, lag: int = 0) -> tools.Generate:
    """An engine giving `text` five characters a token, stopping with LENGTH at its job's
    max_tokens (read `lag` tokens late, as the engine thread runs ahead of the event loop)."""

    async def generate(request: ChatRequest, on_job: Callable[[Job], None]) -> AsyncGenerator[StreamEvent]:
        job = Job([], request.sampling.max_tokens or 512, SamplerConfig(), lambda _: None, _NoSink())
        on_job(job)
        limits: list[int] = []
        pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
        for n, piece in enumerate(pieces, start=1):
            yield TokenDelta(piece)
            limits.append(job.max_tokens)
            if n >= limits[max(0, n - 1 - lag)]:
                yield StreamEnd(FinishReason.LENGTH, Usage(10, n))
                return
        yield StreamEnd(reason, Usage(10, len(pieces)))

    return generate


async def run(generate: tools.Generate, req: ChatRequest, max_tokens: int = 512) -> list[StreamEvent]:
    return [e async for e in tools.call_tools(generate, req, max_tokens=max_tokens, call_budget=30)]


def said(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'  # 15 tokens here


async def test_a_tool_call_reply_becomes_tool_call_events() -> None:
    events = await run(fake(CALL), request())
    call = events[0]
    assert isinstance(call, ToolCallDelta)
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert call.id.startswith("call_")
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == FinishReason.TOOL_CALLS


async def test_an_answer_streams_and_a_cut_reply_is_never_raw_json() -> None:
    answer = await run(fake('{"content": "It is sunny."}'), request())
    assert said(answer) == "It is sunny."
    assert len([e for e in answer if isinstance(e, TokenDelta)]) > 1  # piece by piece, as decoded
    assert answer[-1] == StreamEnd(FinishReason.STOP, Usage(10, 6))
    cut = await run(fake('{"content": "It is su', FinishReason.LENGTH), request())
    assert said(cut) == "It is su"
    assert cut[-1] == StreamEnd(FinishReason.LENGTH, Usage(10, 5))


async def test_a_tool_call_runs_past_max_tokens_within_its_budget() -> None:
    events = await run(fake(CALL), request(), max_tokens=4)
    assert isinstance(events[0], ToolCallDelta)
    assert events[-1] == StreamEnd(FinishReason.TOOL_CALLS, Usage(10, 15))  # the tokens it took


async def test_a_tool_call_cut_even_past_its_budget_names_both_limits() -> None:
    long_call = CALL.replace("Paris", "Paris" * 40)
    with pytest.raises(InvalidRequest, match=r"max_tokens.*llamacpp\.tool_call_max_tokens"):
        await run(fake(long_call), request(), max_tokens=4)


async def test_an_answer_still_stops_at_max_tokens() -> None:
    text = '{"content": "' + "word " * 40 + '"}'
    events = await run(fake(text), request(), max_tokens=6)
    assert events[-1] == StreamEnd(FinishReason.LENGTH, Usage(10, 6))
    assert said(events) == text[13:30]  # the answer's characters in those 6 tokens


async def test_an_answer_the_engine_ran_past_max_tokens_is_cut_there() -> None:
    text = '{"content": "' + "word " * 40 + '"}'
    events = await run(fake(text, lag=7), request(), max_tokens=6)
    assert said(events) == text[13:30]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == FinishReason.LENGTH
    assert end.usage.completion_tokens == 9  # what was generated, the 3 dropped tokens too


def past_turns(choice: ToolChoice | None) -> ChatRequest:
    return ChatRequest(
        (
            Message("user", "Weather in Paris?"),
            Message("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
            Message("tool", "Sunny, 21 degrees", tool_call_id="c1"),
        ),
        tools=(WEATHER, TIME),
        tool_choice=choice,
    )


def test_with_tool_choice_none_the_history_is_as_before_and_only_an_answer_is_allowed() -> None:
    none, auto = tools.with_tools(past_turns(ToolChoice("none"))), tools.with_tools(past_turns(None))
    assert none.messages[1:] == auto.messages[1:]  # the calls as the JSON the model wrote
    assert json.loads(none.messages[2].content)["tool_calls"][0]["name"] == "get_weather"
    assert "get_weather" in none.messages[0].content  # the catalogue is still there
    assert "Do not call tools now" in none.messages[0].content
    assert "I called" not in str(none.messages)
    assert none.constraint is not None
    assert json.loads(none.constraint.text) == tools.ANSWER


async def test_with_tool_choice_none_a_reply_is_an_answer_even_if_cut_at_once() -> None:
    events = await run(fake('{"content": "Sunny."}'), past_turns(ToolChoice("none")), max_tokens=1)
    assert said(events) == ""
    assert events[-1] == StreamEnd(FinishReason.LENGTH, Usage(10, 1))
