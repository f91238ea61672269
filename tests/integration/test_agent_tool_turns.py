"""Agent turns that call tools: the bundled model with a small max_tokens, and the last
step of every provider, which sends the turn's tool calls and results as messages (never
retold as text the model would copy) with tool_choice "none"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from llmservice.kernel.types import ChatRequest, Message, Tool
from llmservice.providers.llamacpp import provider as llamacpp
from llmservice.service.auth import LOCAL
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.sessions import (
    LLMChoice,
    ServerConfig,
    SessionManager,
    ToolInvocation,
    TurnEvent,
    TurnFinal,
)
from llmservice.service.sessions.agent import run_turn
from llmservice.service.sessions.mcp_client import ToolOutcome
from llmservice.service.settings import CacheSettings, LLMChatSettings

from ..fakes.upstream import Reply
from ..servers import MCP_TOKEN, demo_mcp_server
from .conftest import Service
from .test_provider_conformance import BACKENDS, Backend
from .test_provider_conformance import aws_credentials as aws_credentials  # autouse: Bedrock's keys

TOLD = ("[called", "I called", "Result of")  # how tool steps were once retold as text
ADD_PARAMETERS = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
ADD = Tool("add", "Add two whole numbers", json.dumps(ADD_PARAMETERS))
ADD_2_3 = {"a": 2, "b": 3}


@dataclass
class LocalTurn:
    events: list[TurnEvent]
    prompts: list[tuple[Message, ...]]  # the messages each model call rendered, in order
    answer_tokens: int


@pytest.fixture(scope="module")
async def local_turn(service: Service) -> LocalTurn:
    """One turn of the bundled model with max_tokens 16: less than a tool call takes."""
    prompts: list[tuple[Message, ...]] = []
    render = llamacpp._prompt_tokens

    def recorded(loaded: Any, model: str, request: ChatRequest) -> list[int]:
        prompts.append(request.messages)
        return render(loaded, model, request)

    core = LLMCore(ProviderRegistry({"llamacpp": service.engine}, "llamacpp"))
    settings = LLMChatSettings(allowed_hosts=["127.0.0.1"], max_steps=2)
    llm = LLMChoice(provider="llamacpp", temperature=0, max_tokens=16)
    with pytest.MonkeyPatch.context() as patch, demo_mcp_server(only=("add",)) as mcp_url:
        patch.setattr(llamacpp, "_prompt_tokens", recorded)
        async with SessionManager(core, settings, CacheSettings()) as sessions:
            await sessions.connect(LOCAL, "t-1", ServerConfig(mcp_url, auth_token=MCP_TOKEN), llm)
            events = [e async for e in await sessions.chat(LOCAL, "t-1", "Add 2 and 3.")]
    final = events[-1]
    assert isinstance(final, TurnFinal)
    with service.engine.pool.peek(service.engine.default_model) as loaded:
        assert loaded is not None
        answer_tokens = len(loaded.model.tokenize_segment(final.response, False))
    return LocalTurn(events, prompts, answer_tokens)


async def test_a_tool_call_longer_than_max_tokens_runs_and_the_answer_keeps_to_it(
    local_turn: LocalTurn,
) -> None:
    invocation = next(e for e in local_turn.events if isinstance(e, ToolInvocation))
    arguments = json.loads(invocation.arguments)
    assert invocation.name == "add"
    assert all(isinstance(v, int) for v in arguments.values()), arguments
    assert (invocation.result, invocation.is_error) == (str(sum(arguments.values())), False)
    final = local_turn.events[-1]
    assert isinstance(final, TurnFinal)
    assert final.response.strip()
    assert 0 < local_turn.answer_tokens <= 16  # the reply's JSON around it counts too
    assert final.model_calls == 2


async def test_the_answer_step_shows_the_call_as_the_model_wrote_it(local_turn: LocalTurn) -> None:
    last = local_turn.prompts[-1]
    assert "Do not call tools now" in last[0].content  # the catalogue, and answer only
    call = json.loads(last[-2].content)["tool_calls"][0]
    assert (last[-2].role, call["name"]) == ("assistant", "add")
    assert not any(told in m.content for m in last for told in TOLD[:2])
    final = local_turn.events[-1]
    assert isinstance(final, TurnFinal)
    assert not any(told in final.response for told in TOLD)
    assert not final.response.lstrip().startswith("{")  # the answer, not the reply's JSON


async def test_chat_completions_with_tool_choice_none_answers_from_the_history(
    client: openai.AsyncOpenAI,
) -> None:
    reply = await client.chat.completions.create(
        model="",
        messages=[
            {"role": "user", "content": "Add 2 and 3."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        ],
        tools=[{"type": "function", "function": {"name": "add", "parameters": ADD_PARAMETERS}}],
        tool_choice="none",
        temperature=0,
        max_tokens=30,
    )
    message = reply.choices[0].message
    assert message.tool_calls is None
    answer = message.content or ""
    assert answer.strip()
    assert not any(told in answer for told in TOLD)
    assert not answer.lstrip().startswith("{")


# The remote providers' last step, as each one's fake upstream received it.

CALL = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])


async def add(name: str, arguments: dict[str, Any]) -> ToolOutcome:
    return ToolOutcome(str(arguments["a"] + arguments["b"]), False)


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


async def test_the_last_step_sends_tool_calls_and_results_in_wire_form(backend: Backend) -> None:
    with backend.fake(CALL, Reply(text="It is 5.")) as upstream:
        async with backend.make(upstream) as provider:
            core = LLMCore(ProviderRegistry({"remote": provider}, "remote"))
            request = ChatRequest((Message("user", "Add 2 and 3."),), tools=(ADD,))
            events = [e async for e in run_turn(core, LOCAL, request, add, max_steps=2, added=[])]
    final = events[-1]
    assert isinstance(final, TurnFinal)
    assert final.response == "It is 5."
    last = upstream.requests[-1]
    assert not any(told in json.dumps(last) for told in TOLD)
    assert LAST_STEP[backend.name.removeprefix("azure_").removesuffix("_compatible")](last)


def _openai(body: dict[str, Any]) -> bool:
    call, result = body["messages"][-2:]
    return (
        body["tool_choice"] == "none"
        and bool(body["tools"])
        and call["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
        and result == {"role": "tool", "tool_call_id": "call_1", "content": "5"}
    )


def _watsonx(body: dict[str, Any]) -> bool:
    return body["tool_choice_option"] == "none" and _openai({**body, "tool_choice": "none"})


def _anthropic(body: dict[str, Any]) -> bool:
    call, result = body["messages"][-2:]
    return (
        body["tool_choice"] == {"type": "none"}
        and bool(body["tools"])
        and call["content"][-1] == {"type": "tool_use", "id": "call_1", "name": "add", "input": ADD_2_3}
        and result["content"][0]["type"] == "tool_result"
        and result["content"][0]["tool_use_id"] == "call_1"
    )


def _bedrock(body: dict[str, Any]) -> bool:
    """Converse has no "none" and reads toolUse blocks only with a toolConfig: the tools go,
    with no toolChoice."""
    call, result = body["messages"][-2:]
    return (
        "toolChoice" not in body["toolConfig"]
        and bool(body["toolConfig"]["tools"])
        and call["content"][-1]["toolUse"] == {"toolUseId": "call_1", "name": "add", "input": ADD_2_3}
        and result["content"][0]["toolResult"]["toolUseId"] == "call_1"
    )


def _ollama(body: dict[str, Any]) -> bool:
    """Ollama has no tool_choice: "none" offers no tools; the history keeps its tool turns,
    the call with its id and the result naming both the call and the tool."""
    call, result = body["messages"][-2:]
    function = call["tool_calls"][0]["function"]
    return (
        "tools" not in body
        and (function["name"], function["arguments"]) == ("add", ADD_2_3)
        and call["tool_calls"][0]["id"] == result["tool_call_id"]
        and (result["role"], result["content"], result["tool_name"]) == ("tool", "5", "add")
    )


LAST_STEP = {
    "openai": _openai,
    "watsonx": _watsonx,
    "anthropic": _anthropic,
    "aws_bedrock": _bedrock,
    "ollama": _ollama,
}
