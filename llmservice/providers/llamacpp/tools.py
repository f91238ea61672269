"""Tool calling for a local model with no tool format of its own.

The tool catalogue goes into the system prompt, and a JSON-schema grammar makes the
reply either `{"tool_calls": [{"name": ..., "arguments": {...}}]}` (one call: the name
one of the tools, the arguments valid for it) or `{"content": "..."}`, so even the
small bundled model can only answer in a shape the caller can use. An answer streams:
once the reply is seen to be `{"content": "`, the string's characters are handed on as
they are decoded (`AnswerText`); tool calls are collected and handed on whole. With
tool_choice "none" the same prompt goes out (earlier calls as the JSON the model wrote)
but the grammar allows only the answer.

A tool call may run past max_tokens by llamacpp.tool_call_max_tokens, since a call cut
short is useless; an answer still stops at max_tokens (finish_reason length). A reply cut
even so is an error, in a tool call: never the raw JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any

from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.types import (
    ChatRequest,
    Constraint,
    FinishReason,
    Message,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    ToolCallDelta,
)
from llmservice.providers.llamacpp.engine import Job

# Runs a request on the engine, handing its Job to the callback before it starts.
Generate = Callable[[ChatRequest, Callable[[Job], None]], AsyncGenerator[StreamEvent]]
ANSWER = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}


def reply_schema(request: ChatRequest) -> dict[str, Any]:
    """The JSON schema of a reply: tool calls (as tool_choice allows) or an answer."""
    if request.forbids_tool_calls:
        return ANSWER
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
    return {"oneOf": [calls, ANSWER]}


def catalogue(request: ChatRequest) -> str:
    tools = [
        {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)}
        for t in request.tools
    ]
    if request.forbids_tool_calls:
        how = 'Do not call tools now. Reply with JSON only: {"content": "<your answer>"}.'
    else:
        how = (
            'Reply with JSON only: {"tool_calls": [{"name": "<tool>", "arguments": {...}}]} to call tools, '
            'or {"content": "<your answer>"} to answer.'
        )
    return f"You can call these tools:\n{json.dumps(tools)}\n{how}"


def plain_turns(messages: tuple[Message, ...], *, calls_as_json: bool = True) -> tuple[Message, ...]:
    """Tool calls and tool results as plain turns, for a chat format that has neither.

    Calls are written in the JSON the constrained reply uses (with_tools, tool_choice "none"
    included); for a request with no tools at all in words, so that its unconstrained reply
    does not imitate the JSON.
    """
    out: list[Message] = []
    names: dict[str, str] = {}
    for m in messages:
        if m.tool_calls:
            names.update({c.id: c.name for c in m.tool_calls})
            calls = [{"name": c.name, "arguments": json.loads(c.arguments)} for c in m.tool_calls]
            if calls_as_json:
                text = json.dumps({"tool_calls": calls})
            else:
                text = " ".join(f"I called {c['name']} with {json.dumps(c['arguments'])}." for c in calls)
            out.append(Message("assistant", text))
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


class AnswerText:
    """Reads a constrained reply as it grows; once it is `{"content": "...`, gives the
    string's new characters, JSON escapes decoded (a piece of an escape waits for the rest)."""

    _START = re.compile(r'\s*\{\s*"(content|tool_calls)"\s*(:\s*"?)?')

    def __init__(self) -> None:
        self.kind: str | None = None  # "content" or "tool_calls", once the first key is read
        self.closed = False  # the answer's closing quote was seen
        self._started = False  # the answer string has begun
        self._head = ""  # the reply before the answer string starts
        self._pending = ""  # the answer's raw text not decoded yet

    def feed(self, piece: str) -> str:
        if self.kind == "tool_calls":
            return ""
        if not self._started:
            self._head += piece
            match = self._START.match(self._head)
            if match is None:
                return ""
            self.kind = match.group(1)
            if self.kind != "content" or not (match.group(2) or "").endswith('"'):
                return ""  # tool calls, or the answer string has not begun
            self._started = True
            piece, self._head = self._head[match.end() :], ""
        return self._decode(piece)

    def _decode(self, piece: str) -> str:
        if self.closed:
            return ""
        raw, out, i = self._pending + piece, [], 0
        while i < len(raw):
            c = raw[i]
            if c == '"':
                self.closed = True
                break
            if c != "\\":
                out.append(c)
                i += 1
                continue
            size = _escape_size(raw, i)
            if size == 0:
                break  # the rest of the escape is still to come
            out.append(json.loads(f'"{raw[i : i + size]}"'))
            i += size
        self._pending = "" if self.closed else raw[i:]
        return "".join(out)


def _escape_size(raw: str, i: int) -> int:
    """Length of the escape at raw[i] ("\\n", "\\u00e9", a surrogate pair), 0 if incomplete."""
    if i + 1 >= len(raw):
        return 0
    if raw[i + 1] != "u":
        return 2
    if i + 6 > len(raw):
        return 0
    if 0xD800 <= int(raw[i + 2 : i + 6], 16) < 0xDC00:  # a high surrogate: its pair follows
        return 12 if i + 12 <= len(raw) else 0
    return 6


async def call_tools(
    generate: Generate, request: ChatRequest, *, max_tokens: int, call_budget: int
) -> AsyncGenerator[StreamEvent]:
    """Run the constrained request; stream an answer as text, hand on tool calls as tool-call
    events. The job may run `call_budget` tokens past `max_tokens` until the reply is seen
    to be an answer; then it is held to `max_tokens` again."""
    engine_request = with_tools(request)
    budget = max_tokens + (0 if request.forbids_tool_calls else call_budget)
    engine_request = replace(engine_request, sampling=replace(engine_request.sampling, max_tokens=budget))
    jobs: list[Job] = []
    reply = AnswerText()
    text: list[str] = []
    tokens = 0  # the engine sends one TokenDelta a token
    closed = False  # the answer ended within max_tokens
    end: StreamEnd | None = None
    async for event in generate(engine_request, jobs.append):
        if isinstance(event, TokenDelta):
            tokens += 1
            text.append(event.text)
            answer = reply.feed(event.text)
            if reply.kind == "content" and jobs:
                jobs[0].max_tokens = max_tokens  # read by the engine thread at its next token
            if tokens <= max_tokens:  # else past the caller's budget, before the engine saw it
                closed = reply.closed
                if answer:
                    yield TokenDelta(answer)
        elif isinstance(event, StreamEnd):
            end = event
    assert end is not None
    if reply.kind == "content" or request.forbids_tool_calls:
        # Closed: whole, even if the engine stopped before the closing brace. Cut by
        # max_tokens before the closing quote: a truncated answer, said so.
        yield replace(end, finish_reason=FinishReason.STOP if closed else FinishReason.LENGTH)
        return
    try:
        calls = json.loads("".join(text))["tool_calls"]
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest(
            "max_tokens",
            f"the model's reply was cut after {end.usage.completion_tokens} tokens, in the middle "
            f"of a tool call; allow more tokens (max_tokens, and the {call_budget} a tool call may "
            "take beyond it, llamacpp.tool_call_max_tokens)",
        ) from None
    for i, call in enumerate(calls):
        yield ToolCallDelta(i, f"call_{uuid.uuid4().hex[:24]}", call["name"], json.dumps(call["arguments"]))
    yield replace(end, finish_reason=FinishReason.TOOL_CALLS)
