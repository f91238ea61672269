"""Redis SIGKILLed under a live /llmchat session, then started again, with and without its data.

What a user should see (llmservice/service/sessions/fallback.py, README "Chat sessions"):
- while Redis is down, the worker that already serves the session goes on from memory:
  the turn is answered (200), but without the history that sits in Redis, so the model
  sees only the new message; a session this worker has never seen is a 503 (it cannot
  tell whether it is connected), never a 404;
- the outage is logged once, and its end once;
- once Redis answers again, what was said meanwhile is handed back to Redis: with
  persistence it joins the history from before the outage; without, the history from
  before is gone and the session goes on from what the outage kept.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from llmservice.service.sessions import history, records
from llmservice.service.sessions.fallback import RETRY_AFTER_S

from ..servers import MCP_TOKEN, RedisServer, demo_mcp_server, llmservice_serve, redis_server
from .conftest import ONE_THREAD

LLM = {"provider": "llamacpp", "config": {"temperature": 0, "max_tokens": 8}}
BEFORE, AFTER = "Say hi.", "Say bye."
DOWN_LOG = "chat sessions and history kept in memory until it returns"
UP_LOG = "Redis reachable again: chat sessions and history back in Redis"


def settings(redis_url: str) -> list[str]:
    return [
        f"cache.redis_url={redis_url}",
        "llmchat.secret_key=shared-by-every-worker",
        'llmchat.allowed_hosts=["127.0.0.1"]',
        "llmchat.max_steps=1",  # one model call a turn, no tools offered: a cheap turn
        "log_level=WARNING",
        ONE_THREAD,
    ]


async def turn(http: httpx.AsyncClient, user_id: str, message: str) -> dict[str, Any]:
    reply = await http.post("/llmchat/chat", json={"user_id": user_id, "message": message})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["response"]
    return body


def said_by_user(store: RedisServer, user_id: str) -> list[str]:
    """What the user said, as the session's history in Redis holds it (open mode: principal `local`)."""
    key = history.KEY.format(records.session_key("local", user_id))
    with redis.Redis.from_url(store.url, decode_responses=True) as client:
        lines = [json.loads(line) for line in client.lrange(key, 0, -1)]
    return [line["content"] for line in lines if line["role"] == "user"]


@pytest.mark.parametrize("persistent", [False, True], ids=["without-persistence", "with-persistence"])
async def test_a_session_outlives_redis_being_killed_and_restarted(tmp_path: Path, persistent: bool) -> None:
    log = tmp_path / "serve.log"
    with (
        redis_server(persist_dir=tmp_path if persistent else None) as store,
        demo_mcp_server() as mcp_url,
        llmservice_serve(*settings(store.url), http=True, log=log) as served,
    ):
        async with httpx.AsyncClient(base_url=served.base_url, timeout=120) as http:
            connect = {"user_id": "r-1", "server": {"url": mcp_url, "auth_token": MCP_TOKEN}, "llm": LLM}
            connected = await http.post("/llmchat/connect", json=connect)
            assert connected.status_code == 200, connected.text
            first = await turn(http, "r-1", BEFORE)
            assert said_by_user(store, "r-1") == [BEFORE]

            store.kill()
            # The worker serving the session answers from memory; the history before the
            # outage is in Redis, out of reach: the same message makes the same prompt.
            during = await turn(http, "r-1", BEFORE)
            assert during["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
            status = await http.get("/llmchat/status/r-1")
            assert status.json() == {"user_id": "r-1", "connected": True}
            # A session this worker never saw: only Redis could say, so a retryable 503.
            unknown = await http.post("/llmchat/chat", json={"user_id": "r-unknown", "message": BEFORE})
            assert unknown.status_code == 503, unknown.text
            assert "session store (Redis) unreachable" in unknown.json()["detail"]

            store.start()  # on the same port: without persistence it starts empty
            assert said_by_user(store, "r-1") == ([BEFORE] if persistent else [])
            await asyncio.sleep(RETRY_AFTER_S + 0.5)  # the worker tries Redis again after this pause
            after = await turn(http, "r-1", AFTER)
            # The outage's turn went back to Redis; with persistence after the turn before it.
            assert said_by_user(store, "r-1") == ([BEFORE] * persistent + [BEFORE, AFTER])
            assert after["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]  # it has a history
            status = await http.get("/llmchat/status/r-1")
            assert status.json() == {"user_id": "r-1", "connected": True}
            with redis.Redis.from_url(store.url, decode_responses=True) as client:
                assert client.exists(
                    records.KEY.format(records.session_key("local", "r-1"))
                )  # the record is back

    lines = log.read_text().splitlines()
    assert sum(DOWN_LOG in line for line in lines) == 1, lines
    assert sum(UP_LOG in line for line in lines) == 1, lines
