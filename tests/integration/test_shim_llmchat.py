"""The /llmchat API over HTTP, through the shim, onto ChatSessionService (memory history)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from llmservice.app import running_service
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..servers import MCP_TOKEN, demo_mcp_server
from .conftest import eventually

KEY_A, KEY_B = "key-alice-123", "key-bob-456"
ALICE = {"authorization": f"Bearer {KEY_A}"}
BOB = {"authorization": f"Bearer {KEY_B}"}
LLM = {"provider": "llamacpp", "config": {"temperature": 0, "max_tokens": 48}}


def settings(**llmchat: Any) -> Settings:
    digest = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B)}
    return Settings.model_validate(
        {
            "server": {"grpc_port": 0},
            "auth": {
                "principals": {"alice": {"key_sha256": digest[KEY_A]}, "bob": {"key_sha256": digest[KEY_B]}}
            },
            "llmchat": {"allowed_hosts": ["127.0.0.1"], "max_steps": 2, **llmchat},
        }
    )


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


async def shim_for(config: Settings) -> AsyncIterator[str]:
    async with (
        running_service(config, registry=ProviderRegistry.from_settings(config)) as server,
        running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0, connect=server.in_process_channel) as port,
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def base() -> AsyncIterator[str]:
    async for url in shim_for(settings()):
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        yield client


async def connect(http: httpx.AsyncClient, user_id: str, url: str, **extra: Any) -> httpx.Response:
    body = {"user_id": user_id, "server": {"url": url, "auth_token": MCP_TOKEN}, "llm": LLM, **extra}
    return await http.post("/llmchat/connect", json=body, headers=ALICE)


def frames(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_connect_chat_streamed_and_whole_then_disconnect(http: httpx.AsyncClient, mcp_url: str) -> None:
    reply = await connect(http, "web-1", mcp_url)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "connected"
    assert body["tool_count"] == len(body["tools"]) == 4
    streamed = await http.post(
        "/llmchat/chat",
        json={"user_id": "web-1", "message": "What is 2 plus 3?", "streaming": True},
        headers=ALICE,
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = frames(streamed.text)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "final"
    assert kinds.index("tool_start") < kinds.index("tool_end") < kinds.index("final")
    final = events[-1][1]
    assert final["tool_used"] is True
    assert final["content"] == "".join(data["content"] for kind, data in events if kind == "token")
    assert set(final) == {
        "type",
        "content",
        "user_id",
        "tool_used",
        "tools",
        "tool_invocations",
        "tool_calls",
        "elapsed_ms",
        "usage",
    }
    usage = final["usage"]
    assert usage["model_calls"] == 2  # the tool call, then the answer
    assert usage["prompt_tokens"] > usage["completion_tokens"] > 0
    assert usage["cached_prompt_tokens"] >= 0  # the last step answers without the tools: a new prompt
    whole = await http.post(
        "/v1/llmchat/chat", json={"user_id": "web-1", "message": "Add 4 and 5."}, headers=ALICE
    )
    assert whole.status_code == 200
    assert set(whole.json()) == set(final) - {"type", "content"} | {"response"}
    # The tool catalogue and the first question open the second turn's prompt too.
    assert whole.json()["usage"]["cached_prompt_tokens"] > 0
    status = await http.get("/llmchat/status/web-1", headers=ALICE)
    assert status.json() == {"user_id": "web-1", "connected": True}
    config = (await http.get("/llmchat/config/web-1", headers=ALICE)).json()
    assert config["mcp_server"]["auth_token"] == "********"
    assert MCP_TOKEN not in json.dumps(config)
    bye = await http.post("/llmchat/disconnect", json={"user_id": "web-1"}, headers=ALICE)
    assert bye.json() == {
        "user_id": "web-1",
        "status": "disconnected",
        "message": "Successfully disconnected",
        "was_connected": True,
    }
    assert (await http.get("/llmchat/status/web-1", headers=ALICE)).json()["connected"] is False


async def test_a_chat_that_does_not_say_answers_as_the_session_was_connected(
    http: httpx.AsyncClient, mcp_url: str
) -> None:
    assert (await connect(http, "web-pref", mcp_url, streaming=True)).status_code == 200
    streamed = await http.post("/llmchat/chat", json={"user_id": "web-pref", "message": "Hi."}, headers=ALICE)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert frames(streamed.text)[-1][0] == "final"
    whole = await http.post(
        "/llmchat/chat", json={"user_id": "web-pref", "message": "Hi.", "streaming": False}, headers=ALICE
    )
    assert whole.headers["content-type"].startswith("application/json")
    await http.post("/llmchat/disconnect", json={"user_id": "web-pref"}, headers=ALICE)


async def test_gateway_models(http: httpx.AsyncClient) -> None:
    models = (await http.get("/llmchat/gateway/models", headers=ALICE)).json()["models"]
    assert any(m["provider"] == "llamacpp" and "tools" in m["capabilities"] for m in models)


async def test_the_documented_errors(http: httpx.AsyncClient, mcp_url: str) -> None:
    assert (await connect(http, "web-2", mcp_url)).status_code == 200

    async def status_of(method: str, path: str, body: Any = None, headers: Any = ALICE) -> int:
        response = await http.request(method, path, json=body, headers=headers)
        assert set(response.json()) == {"detail", "param"}
        assert isinstance(response.json()["detail"], str)
        return response.status_code

    assert await status_of("POST", "/llmchat/chat", {"user_id": "web-2", "message": ""}) == 400
    assert await status_of("POST", "/llmchat/chat", {"user_id": "nobody", "message": "hi"}) == 404
    assert await status_of("POST", "/llmchat/chat", {"user_id": "web-2", "message": "hi"}, headers={}) == 401
    # Another caller's user_id is no session of bob's: the answers for a name nobody has.
    assert await status_of("POST", "/llmchat/chat", {"user_id": "web-2", "message": "hi"}, headers=BOB) == 404
    assert await status_of("GET", "/llmchat/config/web-2", headers=BOB) == 404
    gone = {"user_id": "web-3", "server": {"url": "http://127.0.0.1:9/mcp"}, "llm": LLM}
    assert await status_of("POST", "/llmchat/connect", gone) == 503
    bad_token = {"user_id": "web-3", "server": {"url": mcp_url, "auth_token": "nope"}, "llm": LLM}
    assert await status_of("POST", "/llmchat/connect", bad_token) == 401
    metadata = {"user_id": "web-3", "server": {"url": "http://169.254.169.254/"}, "llm": LLM}
    assert await status_of("POST", "/llmchat/connect", metadata) == 403
    unknown = {
        "user_id": "web-3",
        "server": {"url": mcp_url},
        "llm": {"provider": "llamacpp", "config": {"topk": 3}},
    }
    response = await http.post("/llmchat/connect", json=unknown, headers=ALICE)
    assert response.status_code == 400
    assert "topk" in response.json()["detail"]


async def test_another_callers_user_id_is_a_404_as_for_one_nobody_has(
    http: httpx.AsyncClient, mcp_url: str
) -> None:
    """Regression: bob was told alice's session "belongs to another caller" (a 403: it exists)."""
    assert (await connect(http, "web-alices", mcp_url)).status_code == 200
    for user_id in ("web-alices", "web-nobodys"):
        chat = await http.post("/llmchat/chat", json={"user_id": user_id, "message": "hi"}, headers=BOB)
        assert (chat.status_code, chat.json()["detail"]) == (
            404,
            "No active session found. Please connect to a server first.",
        )
        config = await http.get(f"/llmchat/config/{user_id}", headers=BOB)
        assert (config.status_code, config.json()["detail"]) == (404, "No config found for this user.")
        assert (await http.get(f"/llmchat/status/{user_id}", headers=BOB)).json()["connected"] is False
    body = {"user_id": "web-alices", "server": {"url": mcp_url, "auth_token": MCP_TOKEN}, "llm": LLM}
    assert (await http.post("/llmchat/connect", json=body, headers=BOB)).status_code == 200  # his own
    await http.post("/llmchat/disconnect", json={"user_id": "web-alices"}, headers=BOB)
    assert (await http.get("/llmchat/status/web-alices", headers=ALICE)).json()["connected"] is True
    await http.post("/llmchat/disconnect", json={"user_id": "web-alices"}, headers=ALICE)


async def test_a_refused_turn_is_a_400_and_the_next_turn_answers(
    http: httpx.AsyncClient, mcp_url: str
) -> None:
    """Regression: the refused message stayed in the history and every later turn was a 400."""
    assert (await connect(http, "web-huge", mcp_url)).status_code == 200
    huge = {"user_id": "web-huge", "message": "hello " * 6000, "streaming": False}  # over 4096 tokens
    refused = await http.post("/llmchat/chat", json=huge, headers=ALICE)
    assert refused.status_code == 400
    assert "the prompt is" in refused.json()["detail"]
    ask = {"user_id": "web-huge", "message": "What is 2 plus 3?", "streaming": True}
    events = frames((await http.post("/llmchat/chat", json=ask, headers=ALICE)).text)
    assert events[-1][0] == "final", events
    assert "5" in events[-1][1]["content"]
    await http.post("/llmchat/disconnect", json={"user_id": "web-huge"}, headers=ALICE)


async def test_one_session_past_the_cap_is_a_429(mcp_url: str) -> None:
    async for url in shim_for(settings(max_sessions_per_principal=1)):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            assert (await connect(http, "web-cap-1", mcp_url)).status_code == 200
            over = await connect(http, "web-cap-2", mcp_url)
            assert over.status_code == 429
            assert over.json() == {
                "detail": "this caller has reached the cap of 1 open chat sessions "
                "(llmchat.max_sessions_per_principal); disconnect one first",
                "param": None,
            }
            assert (await connect(http, "web-cap-1", mcp_url)).status_code == 200  # again: no new one
            body = {"user_id": "web-cap-2", "server": {"url": mcp_url, "auth_token": MCP_TOKEN}, "llm": LLM}
            assert (await http.post("/llmchat/connect", json=body, headers=BOB)).status_code == 200
            await http.post("/llmchat/disconnect", json={"user_id": "web-cap-1"}, headers=ALICE)
            assert (await connect(http, "web-cap-2", mcp_url)).status_code == 200


async def test_a_turn_past_its_timeout_is_a_504(mcp_url: str) -> None:
    async for url in shim_for(settings(turn_timeout_s=0.05)):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            assert (await connect(http, "web-slow", mcp_url)).status_code == 200
            whole = await http.post(
                "/llmchat/chat", json={"user_id": "web-slow", "message": "Add 1 and 2."}, headers=ALICE
            )
            assert whole.status_code == 504
            assert "turn_timeout" in whole.json()["detail"]


async def test_a_whole_turn_whose_client_leaves_stops_generating(mcp_url: str) -> None:
    config = settings()
    registry = ProviderRegistry.from_settings(config)
    provider, _ = registry.resolve("", "")
    assert isinstance(provider, LlamaCppProvider)
    async with (
        running_service(config, registry=registry) as server,
        running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0, connect=server.in_process_channel) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http,
    ):
        long = {"provider": "llamacpp", "config": {"temperature": 0, "max_tokens": 1500}}
        assert (await connect(http, "web-leave", mcp_url, llm=long)).status_code == 200
        before = provider.tokens_generated
        message = "Count from 1 to 400, one number per line, and say nothing else."
        body = {"user_id": "web-leave", "message": message, "streaming": False}
        task = asyncio.create_task(http.post("/llmchat/chat", json=body, headers=ALICE))
        await eventually(lambda: provider.tokens_generated > before + 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        left_at = provider.tokens_generated
        await eventually(lambda: provider.held_sequences == 0, timeout_s=60)
        # The turn stopped when its client left (it would have gone on for ~40 more tokens).
        assert provider.tokens_generated - left_at < 15
