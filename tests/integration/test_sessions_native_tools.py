"""A provider with native tool calling (the OpenAI wire format, Ollama's) drives the same
agent loop: the tools go out as the provider's `tools`, its tool calls run on the MCP
server, and the results go back. At the step limit the model is asked for an answer with
tool_choice "none" (or its provider's nearest: Ollama has none, so no tools go), the tool
steps still in the conversation as the provider's own tool messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from llmservice.kernel.errors import Unavailable
from llmservice.providers.ollama.settings import OllamaSettings
from llmservice.providers.openai_family.settings import OpenAISettings
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
from llmservice.service.settings import LLMChatSettings, Settings

from ..fakes.ollama_server import fake_ollama
from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream
from ..servers import MCP_TOKEN, demo_mcp_server

ADD = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])
ADD_AGAIN = Reply(text="", tool_calls=[("call_2", "add", '{"a": 5, "b": 1}')])


async def test_native_tool_calls_run_on_the_mcp_server_and_their_results_go_back() -> None:
    script = (ADD, Reply(text="2 plus 3 is 5."))
    with fake_openai(*script) as upstream, demo_mcp_server() as mcp_url:
        settings = Settings(
            provider="openai",
            openai=OpenAISettings(api_key=SecretStr("k"), base_url=upstream.url + "/v1", model="gpt-test"),
            llmchat=LLMChatSettings(allowed_hosts=["127.0.0.1"]),
        )
        events = await one_turn(settings, mcp_url, "openai")
    invocation = next(e for e in events if isinstance(e, ToolInvocation))
    assert (invocation.name, invocation.result, invocation.is_error) == ("add", "5", False)
    final = events[-1]
    assert isinstance(final, TurnFinal)
    assert final.response == "2 plus 3 is 5."
    first, second = upstream.requests
    assert {t["function"]["name"] for t in first["tools"]} == {"add", "get_weather", "slow", "fail"}
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "add"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "5"}


@contextmanager
def ollama_with_mcp(*script: Reply) -> Iterator[tuple[Upstream, str, Settings]]:
    with fake_ollama(*script) as upstream, demo_mcp_server() as mcp_url:
        settings = Settings(
            provider="ollama",
            ollama=OllamaSettings(base_url=upstream.url, model="llama3.2:1b"),
            llmchat=LLMChatSettings(allowed_hosts=["127.0.0.1"], max_steps=2),
        )
        yield upstream, mcp_url, settings


async def one_turn(settings: Settings, mcp_url: str, provider: str) -> list[TurnEvent]:
    registry = ProviderRegistry.from_settings(settings)
    async with registry, SessionManager(LLMCore(registry), settings.llmchat, settings.cache) as sessions:
        await sessions.connect(
            LOCAL, "n-1", ServerConfig(mcp_url, auth_token=MCP_TOKEN), LLMChoice(provider=provider)
        )
        return [e async for e in await sessions.chat(LOCAL, "n-1", "What is 2 plus 3, plus 1?")]


async def test_at_the_step_limit_ollama_is_asked_to_answer_without_tools() -> None:
    """Ollama has no tool_choice: the last step sends no tools, and the tool turns as Ollama's own."""
    with ollama_with_mcp(ADD, Reply(text="It is 6.")) as (upstream, mcp_url, settings):
        events = await one_turn(settings, mcp_url, "ollama")
    final = events[-1]
    assert isinstance(final, TurnFinal)
    assert final.response == "It is 6."
    assert len(upstream.requests) == 2  # max_steps model calls, not one more
    first, last = upstream.requests
    assert first["tools"]
    assert "tools" not in last
    assert "tool_choice" not in last
    # The tool's call and result are still in the conversation, in Ollama's wire form.
    assert (last["messages"][-1]["role"], last["messages"][-1]["content"]) == ("tool", "5")
    assert last["messages"][-2]["tool_calls"][0]["function"]["name"] == "add"
    assert not any("[called" in str(m.get("content")) for m in last["messages"])


async def test_a_model_that_still_calls_tools_at_the_limit_is_a_clear_error() -> None:
    """Regression: a provider returning calls on the last step hit an assert (a 500)."""
    with (
        ollama_with_mcp(ADD, ADD_AGAIN) as (upstream, mcp_url, settings),
        pytest.raises(Unavailable, match="max_steps"),
    ):
        await one_turn(settings, mcp_url, "ollama")
    assert len(upstream.requests) == 2


async def test_with_one_step_the_model_answers_at_once() -> None:
    with ollama_with_mcp(Reply(text="Hello.")) as (upstream, mcp_url, settings):
        settings = settings.model_copy(
            update={"llmchat": LLMChatSettings(allowed_hosts=["127.0.0.1"], max_steps=1)}
        )
        events = await one_turn(settings, mcp_url, "ollama")
    assert isinstance(events[-1], TurnFinal)
    assert events[-1].response == "Hello."
    assert len(upstream.requests) == 1
    assert "tools" not in upstream.requests[0]
