"""Tool calling for a local model with no tool format of its own.

The tool catalogue goes into the system prompt, and a JSON-schema grammar makes the
reply either `{"tool_calls": [{"name": ..., "arguments": {...}}]}` (one call: the name
one of the tools, the arguments valid for it) or `{"content": "..."}`, so even the
small bundled model can only answer in a shape the caller can use. The reply is
collected, then handed on as tool-call events or as text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any

from llmservice.types import (
    ChatRequest,
    Constraint,
    FinishReason,
    Message,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    ToolCallDelta,
)

Generate = Callable[[ChatRequest], AsyncGenerator[StreamEvent]]


def reply_schema(request: ChatRequest) -> dict[str, Any]:
    """The JSON schema of a reply: tool calls (as tool_choice allows) or an answer."""
    choice = request.tool_choice
    tools = [t for t in request.tools if choice is None or choice.mode != "function" or t.name == choice.name]
    call = {
        "oneOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": json.loads(t.parameters)},
                "required": ["name", "arguments"],
            }
            for t in tools
        ]
    }
    calls = {
        "type": "object",
        # One call per reply: small models repeat a call until max_tokens when allowed more;
        # an agent loop asks again for the next one.
        "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1, "maxItems": 1}},
        "required": ["tool_calls"],
    }
    if choice is not None and choice.mode in ("required", "function"):
        return calls
    answer = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
    return {"oneOf": [calls, answer]}


def catalogue(request: ChatRequest) -> str:
    tools = [
        {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)}
        for t in request.tools
    ]
    return (
        "You can call these tools:\n"
        f"{json.dumps(tools)}\n"
        'Reply with JSON only: {"tool_calls": [{"name": "<tool>", "arguments": {...}}]} to call tools, '
        'or {"content": "<your answer>"} to answer.'
    )


def plain_turns(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """Tool calls and tool results as plain turns, for a chat format that has neither."""
    out: list[Message] = []
    names: dict[str, str] = {}
    for m in messages:
        if m.tool_calls:
            names.update({c.id: c.name for c in m.tool_calls})
            calls = [{"name": c.name, "arguments": json.loads(c.arguments)} for c in m.tool_calls]
            out.append(Message("assistant", json.dumps({"tool_calls": calls})))
        elif m.role == "tool":
            out.append(Message("user", f"Result of {names.get(m.tool_call_id, 'the tool')}: {m.content}"))
        else:
            out.append(m)
    return tuple(out)


def with_tools(request: ChatRequest) -> ChatRequest:
    """The request as the engine runs it: catalogue in the system turn, reply constrained."""
    messages = list(plain_turns(request.messages))
    if messages and messages[0].role == "system":
        messages[0] = Message("system", f"{messages[0].content}\n\n{catalogue(request)}")
    else:
        messages.insert(0, Message("system", catalogue(request)))
    return replace(
        request,
        messages=tuple(messages),
        tools=(),
        tool_choice=None,
        constraint=Constraint("json_schema", json.dumps(reply_schema(request))),
    )


async def call_tools(generate: Generate, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
    """Run the constrained request; hand on tool calls as tool-call events, an answer as text."""
    text: list[str] = []
    end: StreamEnd | None = None
    async for event in generate(with_tools(request)):
        if isinstance(event, TokenDelta):
            text.append(event.text)
        elif isinstance(event, StreamEnd):
            end = event
    assert end is not None
    try:
        reply = json.loads("".join(text))
    except ValueError:  # cut short by max_tokens: what there is, as text
        yield TokenDelta("".join(text))
        yield end
        return
    if "tool_calls" in reply:
        for i, call in enumerate(reply["tool_calls"]):
            yield ToolCallDelta(
                i, f"call_{uuid.uuid4().hex[:24]}", call["name"], json.dumps(call["arguments"])
            )
        yield replace(end, finish_reason=FinishReason.TOOL_CALLS)
    else:
        yield TokenDelta(reply.get("content", ""))
        yield end
