"""The agent's last step asks for an answer with the turn's tool calls and results as they
are (never retold as text a small model copies) and tool_choice "none"."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

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
from llmservice.service.auth import LOCAL
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions.agent import TurnEvent, TurnFinal, run_turn
from llmservice.service.sessions.mcp_client import ToolOutcome

from ..fakes.one_model import OneModel

ADD = Tool("add", "Add two numbers", '{"type": "object", "properties": {"a": {}, "b": {}}}')
ASK = ChatRequest((Message("user", "Add 2 and 3"),), tools=(ADD,))


class Scripted(OneModel):
    """Calls add(2, 3) while it may call tools, then answers; keeps every request."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        self.requests.append(request)
        if request.tools and request.tool_choice is None:
            yield ToolCallDelta(0, f"call_{len(self.requests)}", "add", '{"a": 2, "b": 3}')
            yield StreamEnd(FinishReason.TOOL_CALLS, Usage(10, 5))
        else:
            yield TokenDelta("It is 5.")
            yield StreamEnd(FinishReason.STOP, Usage(20, 3))


async def add(name: str, arguments: dict[str, Any]) -> ToolOutcome:
    return ToolOutcome(str(arguments["a"] + arguments["b"]), False)


async def turn(provider: Scripted, request: ChatRequest, max_steps: int) -> list[TurnEvent]:
    core = LLMCore(ProviderRegistry({provider.name: provider}, provider.name))
    loop = run_turn(core, LOCAL, request, add, max_steps=max_steps, added=[])
    return [e async for e in loop]


async def test_the_last_step_sends_the_calls_and_results_as_messages_with_tool_choice_none() -> None:
    provider = Scripted()
    events = await turn(provider, ASK, max_steps=2)
    assert isinstance(events[-1], TurnFinal)
    assert events[-1].response == "It is 5."
    last = provider.requests[-1]
    assert last.tool_choice == ToolChoice("none")
    assert last.tools == (ADD,)  # the catalogue the history is read against
    assert last.messages[1:] == (
        Message("assistant", "", (ToolCall("call_1", "add", '{"a": 2, "b": 3}'),)),
        Message("tool", "5", tool_call_id="call_1"),
    )
    assert "[called" not in str(last.messages)


async def test_a_repeated_call_gets_the_answer_only_step_too() -> None:
    provider = Scripted()
    events = await turn(provider, ASK, max_steps=5)
    assert isinstance(events[-1], TurnFinal)
    assert [r.tool_choice for r in provider.requests] == [None, None, ToolChoice("none")]
    assert [m.role for m in provider.requests[-1].messages] == ["user", "assistant", "tool"]


async def test_without_tools_the_answer_step_names_no_tool_choice() -> None:
    provider = Scripted()
    await turn(provider, ChatRequest((Message("user", "Hi"),)), max_steps=1)
    assert provider.requests[0].tool_choice is None
