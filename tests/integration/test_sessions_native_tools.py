"""A provider with native tool calling (the OpenAI wire format) drives the same agent loop:
the tools go out as OpenAI `tools`, its tool calls run on the MCP server, and the results
go back as `tool` messages."""

from __future__ import annotations

from pydantic import SecretStr

from llmservice.auth import LOCAL
from llmservice.core import LLMCore
from llmservice.registry import ProviderRegistry
from llmservice.sessions import SessionManager, ToolInvocation, TurnFinal
from llmservice.settings import LLMChatSettings, OpenAISettings, Settings

from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply
from ..servers import MCP_TOKEN, demo_mcp_server


async def test_native_tool_calls_run_on_the_mcp_server_and_their_results_go_back() -> None:
    script = (
        Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')]),
        Reply(text="2 plus 3 is 5."),
    )
    with fake_openai(*script) as upstream, demo_mcp_server() as mcp_url:
        settings = Settings(
            provider="openai",
            openai=OpenAISettings(api_key=SecretStr("k"), base_url=upstream.url + "/v1", model="gpt-test"),
            llmchat=LLMChatSettings(allowed_hosts=["127.0.0.1"]),
        )
        registry = ProviderRegistry.from_settings(settings)
        async with registry, SessionManager(LLMCore(registry), settings.llmchat, settings.cache) as sessions:
            await sessions.connect(
                LOCAL, "n-1", {"url": mcp_url, "auth_token": MCP_TOKEN}, {"provider": "openai"}
            )
            events = [e async for e in await sessions.chat(LOCAL, "n-1", "What is 2 plus 3?")]
    invocation = next(e for e in events if isinstance(e, ToolInvocation))
    assert (invocation.name, invocation.result, invocation.is_error) == ("add", "5", False)
    final = events[-1]
    assert isinstance(final, TurnFinal)
    assert final.response == "2 plus 3 is 5."
    first, second = upstream.requests
    assert {t["function"]["name"] for t in first["tools"]} == {"add", "get_weather", "slow", "fail"}
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "add"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "5"}
