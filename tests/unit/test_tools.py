"""Tools on the wire: decoded from protobuf, checked, and tool calls encoded back."""

from __future__ import annotations

import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.grpc_api import codec
from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.types import Completion, FinishReason, ToolCall, ToolCallDelta, Usage
from llmservice.service.validation import validate

SCHEMA = '{"type": "object", "properties": {"city": {"type": "string"}}}'


def request(**fields: object) -> pb.LLMChatRequest:
    base = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content="Weather?")],
        tools=[pb.Tool(name="get_weather", description="Weather for a city", parameters_json=SCHEMA)],
    )
    base.MergeFrom(pb.LLMChatRequest(**fields))  # type: ignore[arg-type]
    return base


def test_tools_choice_and_tool_turns_decode() -> None:
    msg = request(
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, name="get_weather"),
        messages=[
            pb.ChatMessage(
                role="assistant", tool_calls=[pb.ToolCall(id="c1", name="get_weather", arguments_json="{}")]
            ),
            pb.ChatMessage(role="tool", content="sunny", tool_call_id="c1"),
        ],
    )
    decoded = codec.decode_chat_request(msg)
    validate(decoded)
    assert decoded.tools[0].name == "get_weather"
    assert decoded.tools[0].parameters == SCHEMA
    assert decoded.tool_choice is not None
    assert (decoded.tool_choice.mode, decoded.tool_choice.name) == ("function", "get_weather")
    assert decoded.messages[1].tool_calls == (ToolCall("c1", "get_weather", "{}"),)
    assert decoded.messages[2].tool_call_id == "c1"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [pb.Tool(name="bad name!")]}, "tools[1].name"),
        ({"tools": [pb.Tool(name="get_weather")]}, "tools[1].name"),
        ({"tools": [pb.Tool(name="t", parameters_json="{nope")]}, "tools[1].parameters"),
        ({"tools": [pb.Tool(name="t", parameters_json='{"type": "array"}')]}, "tools[1].parameters"),
        ({"tool_choice": pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, name="other")}, "tool_choice.name"),
        ({"messages": [pb.ChatMessage(role="tool", content="x")]}, "messages[1].tool_call_id"),
        (
            {"messages": [pb.ChatMessage(role="user", tool_calls=[pb.ToolCall(id="1", name="t")])]},
            "messages[1].tool_calls",
        ),
        (
            {
                "messages": [
                    pb.ChatMessage(
                        role="assistant", tool_calls=[pb.ToolCall(id="1", name="t", arguments_json="{x")]
                    )
                ]
            },
            "messages[1].tool_calls[0].arguments",
        ),
    ],
)
def test_bad_tools_are_refused_naming_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        validate(codec.decode_chat_request(request(**fields)))
    assert raised.value.field == field


def test_required_tool_choice_without_tools_is_refused() -> None:
    msg = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content="hi")],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
    )
    with pytest.raises(InvalidRequest, match="needs tools"):
        validate(codec.decode_chat_request(msg))


def test_tool_calls_encode_on_replies_and_chunks() -> None:
    completion = Completion(
        "",
        "m",
        "openai",
        FinishReason.TOOL_CALLS,
        Usage(3, 4),
        (ToolCall("c1", "get_weather", '{"city": "Oslo"}'),),
    )
    reply = codec.encode_completion(completion)
    assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name, c.arguments_json) for c in reply.tool_calls] == [
        ("c1", "get_weather", '{"city": "Oslo"}')
    ]
    chunk = codec.encode_tool_call(ToolCallDelta(0, "c1", "get_weather", '{"ci'), "m")
    assert (chunk.tool_call.index, chunk.tool_call.id, chunk.tool_call.arguments_json) == (0, "c1", '{"ci')
    assert not chunk.done
    assert chunk.token == ""
