"""The one conformance suite every remote provider runs over its vendor's recorded fixtures.

A vendor's cases say which fixture(s) answer, what is asked, and what the caller must see:
text, finish reason, usage and tool calls, or the domain error (its type and words) and
how many upstream calls were made. Every vendor covers the same kinds (`CORE`), plus one
case per finish reason and per error its provider's wire facts name (the `Wire` of its
entry, printed in docs/providers.md); a kind it cannot record offline is in the wire's
`unrecorded`, with the reason, so the docs say so too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmservice.kernel.errors import LLMServiceError
from llmservice.kernel.provider import Provider, Wire
from llmservice.kernel.types import (
    ChatRequest,
    FinishReason,
    Message,
    StreamEnd,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    assemble_tool_calls,
)
from llmservice.providers import entries
from llmservice.providers.remote.retry import RetryPolicy

from .replay import Gate, Replay, load, replaying

# What every vendor's cases cover: a whole text reply, a stream, tool calls (whole and
# streamed), a forced tool call, a refusal or content filter, usage, a stream cut short.
CORE = ("text", "stream", "tools", "tools_stream", "forced_tool", "refusal", "usage", "cut_stream")

HELLO = ChatRequest((Message("user", "Say hello."),))
WEATHER = Tool(
    "get_weather",
    "Weather for a city",
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
)
ASK_WEATHER = ChatRequest((Message("user", "What is the weather in Paris?"),), tools=(WEATHER,))
FORCE_WEATHER = ChatRequest(
    (Message("user", "What is the weather in Paris?"),),
    tools=(WEATHER,),
    tool_choice=ToolChoice("function", "get_weather"),
)
# A history that holds a tool call and its result, with no tools offered this turn.
AFTER_TOOLS = ChatRequest(
    (
        Message("user", "What is the weather in Paris?"),
        Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
        Message("tool", "18 degrees and sunny", tool_call_id="call_1"),
        Message("user", "Thanks. Summarise it in five words."),
    )
)


@dataclass(frozen=True)
class Expect:
    text: str | None = None  # the whole text; for an error, the text that arrived before it
    finish: FinishReason | None = None
    usage: tuple[int, int, int] | None = None  # prompt (cached included), completion, cached
    tool_calls: tuple[tuple[str, str, dict[str, Any]], ...] | None = None  # id ("" any), name, arguments
    error: type[LLMServiceError] | None = None  # exactly this type
    says: tuple[str, ...] = ()  # words the error's message must hold
    retry_after_s: float | None = None
    calls: int | None = None  # upstream calls answered by fixtures (retries show here)


@dataclass(frozen=True)
class Case:
    kind: str  # a CORE kind, "finish:<vendor reason>", "error:<vendor error>", or the vendor's own
    fixtures: tuple[str, ...]  # answered in order, the last repeating
    expect: Expect
    stream: bool = False
    request: ChatRequest = HELLO
    model: str = ""  # "" the vendor's default
    sent: Callable[[Any], object] | None = None  # a check of the first request body sent, raising if wrong
    attempts: int = 2  # the provider's retry policy for the case

    @property
    def id(self) -> str:
        return f"{self.kind}-{'stream' if self.stream else 'whole'}-{'+'.join(self.fixtures)}"


@dataclass(frozen=True)
class Vendor:
    kind: str  # the provider kind, as in llm.toml
    directory: Path  # holds fixtures/ and README.md
    make: Callable[[str], Provider]  # the replay server's URL -> the provider
    gate: Gate
    cases: tuple[Case, ...]
    model: str = "m"

    @property
    def wire(self) -> Wire:
        """The provider's own wire facts (its entry's), which docs/providers.md prints."""
        wire = entries()[self.kind].wire
        assert wire is not None, f"provider {self.kind} declares no wire facts"
        return wire

    def missing(self) -> list[str]:
        """Kinds the suite wants, for every finish reason and error the provider's wire facts
        name, that neither a case nor the wire's `unrecorded` (with its reason) covers."""
        wire = self.wire
        wanted = [*CORE, *(f"finish:{r}" for r in wire.finish), *(f"error:{e}" for e in wire.errors)]
        have = {c.kind for c in self.cases} | set(wire.unrecorded)
        return [k for k in wanted if k not in have]


@dataclass
class Outcome:
    text: str
    finish: FinishReason | None
    usage: tuple[int, int, int] | None
    tool_calls: tuple[ToolCall, ...]
    error: LLMServiceError | None
    replay: Replay


async def run(vendor: Vendor, case: Case) -> Outcome:
    script = [load(vendor.directory, name) for name in case.fixtures]
    model = case.model or vendor.model
    with replaying(script, vendor.gate) as replay:
        provider = vendor.make(replay.url)
        provider.retry = RetryPolicy(attempts=case.attempts, base_s=0.01)  # type: ignore[attr-defined]
        text: list[str] = []
        deltas: list[ToolCallDelta] = []
        finish = usage = error = None
        calls: tuple[ToolCall, ...] = ()
        async with provider:
            try:
                provider.validate(model, case.request)
                if case.stream:
                    async for event in provider.stream(model, case.request):
                        if isinstance(event, TokenDelta):
                            text.append(event.text)
                        elif isinstance(event, ToolCallDelta):
                            deltas.append(event)
                        elif isinstance(event, StreamEnd):
                            finish = event.finish_reason
                            u = event.usage
                            usage = (u.prompt_tokens, u.completion_tokens, u.cached_tokens)
                    calls = assemble_tool_calls(deltas)
                else:
                    completion = await provider.complete(model, case.request)
                    text.append(completion.text)
                    finish = completion.finish_reason
                    u = completion.usage
                    usage = (u.prompt_tokens, u.completion_tokens, u.cached_tokens)
                    calls = completion.tool_calls
            except LLMServiceError as exc:
                error = exc
        return Outcome("".join(text), finish, usage, calls, error, replay)


def check(case: Case, outcome: Outcome) -> None:
    """What the caller saw against what the case expects; the vendor must have taken the request."""
    e = case.expect
    refused = [
        (r.path, status, body.decode(errors="replace")[:300]) for r, status, body in outcome.replay.refused
    ]
    if e.error is None:
        assert outcome.error is None, f"{outcome.error!r} (the vendor refused: {refused})"
    else:
        assert type(outcome.error) is e.error, f"wanted {e.error.__name__}, got {outcome.error!r}"
        for words in e.says:
            assert words in outcome.error.message, f"{words!r} not in {outcome.error.message!r}"
        if e.retry_after_s is not None:
            assert outcome.error.retry_after_s == e.retry_after_s
    if e.text is not None:
        assert outcome.text == e.text
    if e.finish is not None:
        assert outcome.finish == e.finish
    if e.usage is not None:
        assert outcome.usage == e.usage
    if e.tool_calls is not None:
        got = [(c.id, c.name, json.loads(c.arguments)) for c in outcome.tool_calls]
        assert len(got) == len(e.tool_calls), got
        for (gid, gname, gargs), (wid, wname, wargs) in zip(got, e.tool_calls, strict=True):
            assert gid, "a tool call without an id"
            assert (gid if wid else "", gname, gargs) == (wid, wname, wargs)
    if e.calls is not None:
        assert outcome.replay.answered == e.calls
    if case.sent is not None:
        case.sent(outcome.replay.bodies()[0])
