"""The agent loop: the model asks for tools, the tools run, their results go back, until
the model answers or the step limit is reached.

Providers with native tool calling use it; the local engine gets the catalogue in its
prompt and a JSON-schema grammar (llmservice.providers.llamacpp.tools), so the loop is the same for
every provider. The last step (out of steps, or the model repeating a call) asks for an
answer with tool_choice "none". Each step's events are yielded as they happen; the
messages the turn adds (tool steps included) are collected in `added`, for the history.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmservice.kernel.errors import Unavailable
from llmservice.kernel.types import (
    ChatRequest,
    Message,
    StreamEnd,
    TokenDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
    assemble_tool_calls,
)
from llmservice.observability.span_attributes import llm_attributes
from llmservice.service.auth import Principal
from llmservice.service.core import LLMCore
from llmservice.service.sessions.mcp_client import ToolOutcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from llmservice.observability.tracing import Tracing

RunTool = Callable[[str, dict[str, Any]], Awaitable[ToolOutcome]]


@dataclass(frozen=True)
class TurnToken:
    text: str


@dataclass(frozen=True)
class ToolStarted:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolInvocation:
    id: str
    name: str
    arguments: str
    result: str
    is_error: bool
    elapsed_ms: float


@dataclass(frozen=True)
class TurnFinal:
    response: str
    tool_invocations: tuple[ToolInvocation, ...]
    elapsed_ms: float
    usage: Usage = field(default_factory=Usage)  # summed over the turn's model calls
    model_calls: int = 0


TurnEvent = TurnToken | ToolStarted | ToolInvocation | TurnFinal


async def run_turn(
    core: LLMCore,
    principal: Principal,
    request: ChatRequest,
    run_tool: RunTool,
    *,
    max_steps: int,
    added: list[Message],
    tracing: Tracing | None = None,
) -> AsyncGenerator[TurnEvent]:
    """Run one turn of `request` (history and the new user message in `messages`, the
    session's tools in `tools`). A ToolInvocation says a tool ended; `is_error` if it failed.
    With `tracing`, each model call is an `llm.request` span inside the turn's."""
    started = time.monotonic()
    invocations: list[ToolInvocation] = []
    made: set[tuple[str, str]] = set()  # (name, arguments) of every call run this turn
    base = request.messages
    answer_now = False
    used = Usage()
    for step in range(max_steps):
        # Out of steps, or asking again for calls already made: the model must answer now.
        last = step == max_steps - 1 or answer_now
        messages = base + tuple(added)
        step_request = _answer_only(request, messages) if last else replace(request, messages=messages)
        text: list[str] = []
        deltas: list[ToolCallDelta] = []
        with _step_span(tracing, step) as span:
            stream = core.stream(step_request, principal)
            if span is not None:
                span.set_attributes(llm_attributes(provider=stream.provider, model=stream.model))
            async with contextlib.aclosing(stream.events) as events:
                async for event in events:
                    if isinstance(event, TokenDelta):
                        text.append(event.text)
                        yield TurnToken(event.text)
                    elif isinstance(event, ToolCallDelta):
                        deltas.append(event)
                    elif isinstance(event, StreamEnd):
                        u = event.usage
                        used = Usage(
                            used.prompt_tokens + u.prompt_tokens,
                            used.completion_tokens + u.completion_tokens,
                            used.cached_tokens + u.cached_tokens,
                        )
                        if span is None:
                            continue
                        span.set_attributes(  # and who served it, when a route moved on
                            llm_attributes(
                                provider=event.provider,
                                prompt_tokens=u.prompt_tokens,
                                completion_tokens=u.completion_tokens,
                                total_tokens=u.prompt_tokens + u.completion_tokens,
                                cached_prompt_tokens=u.cached_tokens,
                            )
                        )
        calls = assemble_tool_calls(deltas)
        if last or not calls:
            if calls and not text:  # called tools though told not to (Bedrock may), said nothing
                raise Unavailable(
                    f"the model gave no answer after {step + 1} model calls "
                    "(llmchat.max_steps); it kept asking for tools"
                )
            answer = "".join(text)
            added.append(Message("assistant", answer))
            elapsed = (time.monotonic() - started) * 1000
            yield TurnFinal(answer, tuple(invocations), elapsed, used, step + 1)
            return
        if all((c.name, _canonical(c.arguments)) in made for c in calls):
            answer_now = True  # a model that repeats itself has what the tools can give
            continue
        added.append(Message("assistant", "".join(text), calls))
        for call in calls:
            made.add((call.name, _canonical(call.arguments)))
            yield ToolStarted(call.id, call.name, call.arguments)
            invocation = await _invoke(call, run_tool)
            invocations.append(invocation)
            added.append(Message("tool", invocation.result, tool_call_id=call.id))
            yield invocation


CUT_SHORT = (
    "cancelled: the turn was cut short before this tool call returned, so whether it took effect is unknown"
)


def settled(added: Sequence[Message]) -> list[Message]:
    """The messages a turn added, with every tool call answered. A turn cut while its tools
    ran (its caller gone, its timeout, the service shutting down) leaves calls without
    results, which no provider takes in a conversation; each such call gets a result
    saying so, so the history stays one a later turn can send, and a reader sees what was
    asked of the tools (a call may have done its work before it was cut)."""
    out: list[Message] = []
    unanswered: list[str] = []  # the ids of the last step's calls with no result yet
    for m in added:
        if m.role == "tool":
            unanswered = [i for i in unanswered if i != m.tool_call_id]
        else:
            out += [Message("tool", CUT_SHORT, tool_call_id=i) for i in unanswered]
            unanswered = [c.id for c in m.tool_calls]
        out.append(m)
    return out + [Message("tool", CUT_SHORT, tool_call_id=i) for i in unanswered]


def _step_span(tracing: Tracing | None, step: int) -> contextlib.AbstractContextManager[Span | None]:
    if tracing is None:
        return contextlib.nullcontext()
    return tracing.child("llm.request", {"llm.step": step})


def _answer_only(request: ChatRequest, messages: tuple[Message, ...]) -> ChatRequest:
    """The last step: the tool steps so far go as they are (calls and results in each
    provider's own form, never retold as text a small model would copy), the catalogue
    still offered (some providers read tool turns only beside it), but tool_choice "none"."""
    return replace(request, messages=messages, tool_choice=ToolChoice("none") if request.tools else None)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except ValueError:
        return arguments


async def _invoke(call: ToolCall, run_tool: RunTool) -> ToolInvocation:
    began = time.monotonic()
    try:
        arguments = json.loads(call.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("arguments are not a JSON object")
    except ValueError as exc:
        outcome = ToolOutcome(f"tool {call.name}: the model's arguments are not valid JSON ({exc})", True)
    else:
        outcome = await run_tool(call.name, arguments)
    return ToolInvocation(
        call.id, call.name, call.arguments, outcome.text, outcome.is_error, (time.monotonic() - began) * 1000
    )
