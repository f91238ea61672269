"""/llmchat as its document describes it, checked by a client written from the document
alone (bodies, SSE event names and fields, types), on the bundled model and on a remote
provider the session brings its own settings for; and what those settings may not do."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from llmservice.app import running_service
from llmservice.observability.settings import TracingSettings
from llmservice.observability.tracing import Tracing
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import CacheSettings, ServerSettings

from ..fakes.anthropic_server import fake_anthropic
from ..fakes.ollama_server import fake_ollama
from ..fakes.openai_server import fake_openai
from ..fakes.upstream import Reply, Upstream
from ..fakes.watsonx_server import fake_watsonx
from ..servers import MCP_TOKEN, demo_mcp_server, redis_server
from .test_shim_llmchat import ALICE, frames, settings, shim_for

KEY = "sk-session-LEAKCANARY-9876543210"


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async for url in shim_for(settings()):
        async with httpx.AsyncClient(base_url=url, timeout=120, headers=ALICE) as client:
            yield client


class DocumentedClient:
    """Only what the document says: each reply's fields by name and type."""

    def __init__(self, http: httpx.AsyncClient, seen: list[str]) -> None:
        self.http, self.seen = http, seen

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        reply = await self.http.post(path, json=body)
        self.seen.append(reply.text)
        return reply

    async def connect(self, user_id: str, server: dict[str, Any], llm: dict[str, Any]) -> dict[str, Any]:
        reply = await self.post(
            "/llmchat/connect", {"user_id": user_id, "server": server, "llm": llm, "streaming": False}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["status"] == "connected"
        assert body["user_id"] == user_id
        assert isinstance(body["provider"], str)
        assert body["tool_count"] == len(body["tools"])
        assert all(isinstance(t, str) for t in body["tools"])
        return body

    async def chat(self, user_id: str, message: str) -> dict[str, Any]:
        reply = await self.post("/llmchat/chat", {"user_id": user_id, "message": message, "streaming": False})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["user_id"] == user_id
        assert isinstance(body["response"], str)
        assert isinstance(body["tool_used"], bool)
        assert all(isinstance(t, str) for t in body["tools"])
        assert isinstance(body["tool_invocations"], int)
        assert isinstance(body["elapsed_ms"], int)
        return body

    async def stream(self, user_id: str, message: str) -> list[tuple[str, dict[str, Any]]]:
        reply = await self.post("/llmchat/chat", {"user_id": user_id, "message": message, "streaming": True})
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = frames(reply.text)
        for kind, data in events:
            assert kind in ("token", "tool_start", "tool_end", "tool_error", "final"), (kind, data)
            if kind == "token":
                assert isinstance(data["content"], str)
            elif kind == "tool_start":
                assert data["type"] == "tool_start"
                assert {"id", "tool", "input", "start"} <= set(data)
            elif kind == "tool_end":
                assert data["type"] == "tool_end"
                assert {"id", "tool", "output", "end"} <= set(data)
            elif kind == "tool_error":
                assert data["type"] == "tool_error"
                assert {"id", "tool", "error", "time"} <= set(data)
            else:
                assert data["type"] == "final"
                assert isinstance(data["content"], str)
                assert isinstance(data["tool_used"], bool)
                assert isinstance(data["elapsed_ms"], int)
        assert events[-1][0] == "final"
        tokens = "".join(d["content"] for k, d in events if k == "token")
        assert events[-1][1]["content"] == tokens
        return events

    async def status(self, user_id: str) -> bool:
        reply = await self.http.get(f"/llmchat/status/{user_id}")
        self.seen.append(reply.text)
        assert set(reply.json()) == {"user_id", "connected"}
        return bool(reply.json()["connected"])

    async def config(self, user_id: str) -> dict[str, Any]:
        reply = await self.http.get(f"/llmchat/config/{user_id}")
        self.seen.append(reply.text)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    async def disconnect(self, user_id: str) -> None:
        reply = await self.post("/llmchat/disconnect", {"user_id": user_id})
        assert reply.json() == {
            "status": "disconnected",
            "user_id": user_id,
            "message": "Successfully disconnected",
            "was_connected": True,
        }


async def test_the_bundled_model_through_the_documented_calls(http: httpx.AsyncClient, mcp_url: str) -> None:
    client = DocumentedClient(http, [])
    server = {"url": mcp_url, "transport": "streamable_http", "auth_token": MCP_TOKEN}
    llm = {"provider": "llamacpp", "config": {"temperature": 0, "max_tokens": 48}}
    await client.connect("doc-local", server, llm)
    whole = await client.chat("doc-local", "What is 2 plus 3?")
    assert whole["tool_invocations"] == len(whole["tool_calls"])
    events = await client.stream("doc-local", "Add 4 and 5.")
    if whole["tool_used"]:
        assert "5" in whole["tool_calls"][0]["output"]
    assert any(kind == "tool_start" for kind, _ in events) or events[-1][1]["content"]
    assert await client.status("doc-local") is True
    config = await client.config("doc-local")
    assert config["llm"]["provider"] == "llamacpp"
    assert config["mcp_server"]["auth_token"] == "********"
    await client.disconnect("doc-local")
    assert await client.status("doc-local") is False
    gone = await http.get("/llmchat/config/doc-local")
    assert (gone.status_code, gone.json()["detail"]) == (404, "No config found for this user.")


def _fake_bedrock(*script: Reply) -> AbstractContextManager[Upstream]:
    pytest.importorskip("botocore")
    from ..fakes.bedrock_server import fake_bedrock

    return fake_bedrock(*script, access_key="AKIDSESSION", secret_key=KEY, region="eu-west-1")


@dataclass
class Remote:
    """A remote provider's fake, the documented llm.config that reaches it, and where the key goes."""

    provider: str
    fake: Callable[..., AbstractContextManager[Upstream]]
    config: Callable[[str], dict[str, Any]]  # (the fake's URL) -> llm.config
    key_header: tuple[str, str] | None


REMOTES = [
    Remote(
        "openai",
        fake_openai,
        lambda url: {"api_key": KEY, "base_url": url + "/v1", "model": "m"},
        ("authorization", f"Bearer {KEY}"),
    ),
    Remote(
        "azure_openai",
        fake_openai,
        lambda url: {
            "api_key": KEY,
            "azure_endpoint": url,
            "azure_deployment": "m",
            "api_version": "2024-10-21",
        },
        ("api-key", KEY),
    ),
    Remote(
        "anthropic",
        fake_anthropic,
        lambda url: {"api_key": KEY, "base_url": url, "model": "m"},
        ("x-api-key", KEY),
    ),
    Remote(
        "watsonx",
        lambda *script: fake_watsonx(*script, api_key=KEY),
        lambda url: {"apikey": KEY, "url": url, "iam_url": url, "projectid": "p1", "model_id": "m"},
        ("authorization", "Bearer tok-0"),  # the token the fake's IAM gave for the key
    ),
    Remote(
        "aws_bedrock",
        _fake_bedrock,
        lambda url: {
            "model_id": "m",
            "region_name": "eu-west-1",
            "aws_access_key_id": "AKIDSESSION",
            "aws_secret_access_key": KEY,
            "endpoint_url": url,
        },
        ("authorization", "Credential=AKIDSESSION/"),
    ),
    Remote("ollama", fake_ollama, lambda url: {"base_url": url, "model": "m", "num_ctx": 2048}, None),
]


@pytest.mark.parametrize("remote", REMOTES, ids=lambda r: r.provider)
async def test_a_session_with_its_own_provider_settings(
    http: httpx.AsyncClient, mcp_url: str, remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    """Each documented provider, none of them configured on the server: the session brings
    its key and endpoint, the turns call the tool, and the key reaches that upstream only."""
    caplog.set_level(logging.DEBUG, logger="llmservice")
    seen: list[str] = []
    client = DocumentedClient(http, seen)
    user = f"doc-{remote.provider}"
    add = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])
    with remote.fake(add, Reply(text="The sum is 5."), add, Reply(text="It is 5.")) as upstream:
        server = {"url": mcp_url, "auth_token": MCP_TOKEN}
        llm = {"provider": remote.provider, "config": remote.config(upstream.url)}
        connected = await client.connect(user, server, llm)
        assert connected["provider"] == remote.provider
        whole = await client.chat(user, "What is 2 plus 3?")
        assert (whole["response"], whole["tool_invocations"], whole["tools"]) == ("The sum is 5.", 1, ["add"])
        events = await client.stream(user, "And again?")
        start = next(d for k, d in events if k == "tool_start")
        assert (start["tool"], start["input"]) == ("add", {"a": 2, "b": 3})
        assert next(d for k, d in events if k == "tool_end")["output"] == "5"
        assert events[-1][1]["content"] == "It is 5."
        config = await client.config(user)
        secrets = {k for k in config["llm"]["config"] if k in ("api_key", "aws_secret_access_key")}
        assert all(config["llm"]["config"][k] == "********" for k in secrets)
        await client.disconnect(user)
    chats = [r for r in upstream.requests if "messages" in r]
    assert len(chats) == 4  # two turns of two model calls each
    if remote.key_header is not None:
        name, value = remote.key_header
        assert all(
            value in h.get(name, "")
            for h, r in zip(upstream.headers, upstream.requests, strict=True)
            if "messages" in r
        )
    if remote.provider == "ollama":
        assert {r["options"]["num_ctx"] for r in chats} == {2048}
    assert not [text for text in seen if KEY in text]  # in no reply
    assert KEY not in caplog.text  # in no log line


async def test_what_session_settings_may_not_do(http: httpx.AsyncClient, mcp_url: str) -> None:
    server = {"url": mcp_url, "auth_token": MCP_TOKEN}

    async def refused(config: dict[str, Any], provider: str = "openai") -> tuple[int, str]:
        body = {"user_id": "doc-bad", "server": server, "llm": {"provider": provider, "config": config}}
        reply = await http.post("/llmchat/connect", json=body)
        assert KEY not in reply.text
        return reply.status_code, str(reply.json()["detail"])

    assert await refused({}) == (
        400,
        "Invalid configuration: API key is required for provider openai: "
        "set llm.config.api_key or OPENAI_API_KEY",
    )
    metadata = await refused({"api_key": KEY, "base_url": "http://169.254.169.254/v1"})
    assert metadata[0] == 403
    assert "llm.config.base_url: 169.254.169.254 is a cloud metadata endpoint" in metadata[1]
    link_local = await refused({"api_key": KEY, "base_url": "http://169.254.10.10/v1"})
    assert link_local[0] == 403
    assert "link-local" in link_local[1]
    not_http = await refused({"api_key": KEY, "base_url": "file:///etc/passwd"})
    assert not_http[0] == 400
    assert "llm.config.base_url" in not_http[1]
    status, detail = await refused({"project_id": "p"})
    assert status == 400
    assert "llm.config.project_id: is not a setting of provider openai" in detail
    status, detail = await refused({"api_key": KEY}, provider="llamacpp")
    assert status == 400
    assert "in-process" in detail
    status, detail = await refused({"url": "https://93.184.216.34"}, provider="watsonx")  # never reached
    assert status == 400
    assert "API key is required for provider watsonx" in detail
    assert "endpoint of the session's own" in detail  # the server's key would not go there


async def test_an_endpoint_of_the_sessions_own_never_gets_the_servers_key(mcp_url: str) -> None:
    server_key = "sk-server-LEAKCANARY-1111"
    with fake_openai(Reply(text="served")) as ours, fake_openai(Reply(text="stolen")) as theirs:
        config = settings(session_credentials=True).model_copy(
            update={
                "openai": settings().openai.model_copy(
                    update={"api_key": SecretStr(server_key), "base_url": ours.url}
                )
            }
        )
        async for url in shim_for(config):
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=ALICE) as http:
                body = {
                    "user_id": "doc-steal",
                    "server": {"url": mcp_url, "auth_token": MCP_TOKEN},
                    "llm": {"provider": "openai", "config": {"base_url": theirs.url + "/v1"}},
                }
                reply = await http.post("/llmchat/connect", json=body)
                assert reply.status_code == 400
                assert "endpoint of the session's own" in reply.json()["detail"]
                off = await http.post(
                    "/llmchat/connect",
                    json={**body, "llm": {"provider": "openai", "config": {"api_key": KEY}}},
                )
                assert off.status_code == 200  # the server's own endpoint, the session's own key
    assert theirs.headers == []
    assert json.dumps(ours.headers).count(server_key) == 0


async def test_an_operator_may_forbid_session_credentials(mcp_url: str) -> None:
    async for url in shim_for(settings(session_credentials=False)):
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=ALICE) as http:
            body = {
                "user_id": "doc-off",
                "server": {"url": mcp_url, "auth_token": MCP_TOKEN},
                "llm": {"provider": "openai", "config": {"api_key": KEY}},
            }
            reply = await http.post("/llmchat/connect", json=body)
    assert reply.status_code == 403
    assert "llmchat.session_credentials" in reply.json()["detail"]


async def test_a_sessions_key_is_in_no_log_metric_trace_redis_value_or_reply(
    mcp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The leak test: one session with its own key, streamed and whole turns with a tool,
    then every place the service writes to is searched for the key."""
    caplog.set_level(logging.DEBUG, logger="llmservice")
    exporter = InMemorySpanExporter()
    tracing = Tracing.create(TracingSettings(exporter="otlp"), exporter)
    seen: list[str] = []
    add = Reply(text="", tool_calls=[("call_1", "add", '{"a": 2, "b": 3}')])
    with redis_server() as redis, fake_openai(add, Reply(text="5."), add, Reply(text="5 again.")) as up:
        config = settings(secret_key="leak-test-secret").model_copy(
            update={
                "server": ServerSettings(grpc_port=0, metrics_port=0),
                "cache": CacheSettings(redis_url=redis.url),
            }
        )
        async with (
            running_service(config, registry=ProviderRegistry.from_settings(config), tracing=tracing) as svc,
            running_shim(f"127.0.0.1:{svc.port}", "127.0.0.1", 0, tracing) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=ALICE) as http,
        ):
            client = DocumentedClient(http, seen)
            llm = {"provider": "openai", "config": {"api_key": KEY, "base_url": up.url + "/v1", "model": "m"}}
            await client.connect("doc-leak", {"url": mcp_url, "auth_token": MCP_TOKEN}, llm)
            await client.chat("doc-leak", "What is 2 plus 3?")
            await client.stream("doc-leak", "Again?")
            seen.append((await http.get("/llmchat/config/doc-leak")).text)
            store = aioredis.Redis.from_url(redis.url, decode_responses=True)
            values = []
            async for name in store.scan_iter("*"):
                kind = await store.type(name)
                if kind == "string":
                    values.append(str(await store.get(name)))
                elif kind == "list":
                    values += await store.lrange(name, 0, -1)
            assert await store.exists("llmchat:session:alice:doc-leak")
            await store.aclose()
            metrics = (await http.get(f"http://127.0.0.1:{svc.metrics_port}/metrics")).text
            metrics += (await http.get("/metrics")).text
            await client.disconnect("doc-leak")
    tracing.shutdown()
    spans = exporter.get_finished_spans()
    assert any(s.name == "llm.request" for s in spans)
    traced = json.dumps([s.to_json() for s in spans])
    assert {h["authorization"] for h in up.headers} == {f"Bearer {KEY}"}  # it did go where it should
    assert values  # the record and the history are there, the key is not
    for where, text in [
        ("reply", "\n".join(seen)),
        ("log", caplog.text),
        ("metrics", metrics),
        ("trace", traced),
        ("redis", "\n".join(values)),
    ]:
        assert KEY not in text, where


async def test_a_turn_that_fails_in_its_first_step_is_an_error_event(
    http: httpx.AsyncClient, mcp_url: str
) -> None:
    """Once the stream is promised (the session and message were accepted), even a failure
    in the first model call is an SSE `error` event, as the document's streamer sends it."""
    with fake_openai(Reply(status=401, error="Incorrect API key provided")) as upstream:
        llm = {
            "provider": "openai",
            "config": {"api_key": KEY, "base_url": upstream.url + "/v1", "model": "m"},
        }
        body = {"user_id": "doc-first", "server": {"url": mcp_url, "auth_token": MCP_TOKEN}, "llm": llm}
        assert (await http.post("/llmchat/connect", json=body)).status_code == 200
        reply = await http.post(
            "/llmchat/chat", json={"user_id": "doc-first", "message": "hi", "streaming": True}
        )
        await http.post("/llmchat/disconnect", json={"user_id": "doc-first"})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    (kind, error), *_ = frames(reply.text)
    assert kind == "error"
    assert error["type"] == "error"
    assert isinstance(error["error"], str)
    assert error["error"]
    assert error["recoverable"] is False
    assert KEY not in reply.text
