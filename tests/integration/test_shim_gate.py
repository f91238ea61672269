"""What the shim checks before a route runs (rest.gate): the key before the body, the body's size
while it is read, JSON nested past any parser's depth, Host and Origin, and which pages and
gRPC services answer without a key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service, shim_gate
from llmservice.grpc_api import GrpcServer
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.openai_server import fake_openai

KEY = "sk-gate-0123"
HI = [{"role": "user", "content": "Hi"}]
LIMIT_MB = 1
CHAT = {"model": "fake-model", "messages": HI}


@dataclass
class Served:
    http: str  # http://127.0.0.1:PORT
    port: int
    grpc_target: str
    server: GrpcServer


@contextlib.asynccontextmanager
async def serve(extra: dict[str, Any]) -> AsyncIterator[Served]:
    with fake_openai() as upstream:
        settings = Settings.model_validate(
            {
                "provider": "openai",
                "server": {"grpc_port": 0, "max_body_mb": LIMIT_MB},
                "openai": {"api_key": "k", "base_url": upstream.url + "/v1", "model": "fake-model"},
                **extra,
            }
        )
        async with running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server:
            gate = shim_gate(settings, server.auth)
            target = f"127.0.0.1:{server.port}"
            async with running_shim(
                target, "127.0.0.1", 0, connect=server.in_process_channel, gate=gate
            ) as port:
                yield Served(f"http://127.0.0.1:{port}", port, target, server)


PRINCIPALS = {"auth": {"principals": {"team": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}}}


@pytest.fixture(scope="module")
async def keyed() -> AsyncIterator[Served]:
    async with serve(PRINCIPALS) as served:
        yield served


@pytest.fixture(scope="module")
async def open_local() -> AsyncIterator[Served]:
    async with serve({"server": {"grpc_port": 0, "allowed_origins": ["https://app.example"]}}) as served:
        yield served


async def raw_reply(port: int, head: str, wait_s: float = 10) -> tuple[int, dict[str, Any]]:
    """Send only a request's head (no body) and read what comes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), wait_s)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), wait_s)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), wait_s)
        return int(status_line.split()[1]), json.loads(body)
    finally:
        writer.close()


def big_head(port: int, path: str, size: int, key: str | None = None) -> str:
    auth = f"authorization: Bearer {key}\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\nhost: 127.0.0.1:{port}\ncontent-type: application/json\n"
        f"content-length: {size}\n{auth}\n"
    )


async def test_a_caller_without_a_key_gets_401_before_sending_its_body(keyed: Served) -> None:
    # 300 MB announced and not one byte sent: the answer cannot have waited for the body.
    status, body = await raw_reply(keyed.port, big_head(keyed.port, "/v1/chat/completions", 300 << 20))
    assert status == 401
    assert body["error"]["type"] == "authentication_error"


async def test_a_declared_body_over_the_limit_is_413_before_it_is_read(keyed: Served) -> None:
    head = big_head(keyed.port, "/v1/chat/completions", 300 << 20, KEY)
    status, body = await raw_reply(keyed.port, head)
    assert status == 413
    assert body["error"]["type"] == "request_too_large"
    assert "1 MB" in body["error"]["message"]
    assert "server.max_body_mb" in body["error"]["message"]


async def test_a_chunked_body_is_cut_with_413_once_it_passes_the_limit(keyed: Served) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
        for _ in range(4 * LIMIT_MB * 16):  # 4x the limit in 64 KB pieces
            sent += 1 << 16
            yield b"a" * (1 << 16)
        yield b'"}]}'

    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient() as http:
        try:
            response = await http.post(f"{keyed.http}/v1/chat/completions", content=chunks(), headers=headers)
        except httpx.HTTPError:  # the server may close before the client has sent everything
            return
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_each_surface_answers_413_in_its_own_shape(keyed: Served) -> None:
    size = 2 * LIMIT_MB << 20
    status, body = await raw_reply(keyed.port, big_head(keyed.port, "/v1/messages", size, KEY))
    assert (status, body["type"], body["error"]["type"]) == (413, "error", "request_too_large")
    status, body = await raw_reply(keyed.port, big_head(keyed.port, "/llmchat/connect", size, KEY))
    assert status == 413
    assert "larger than 1 MB" in body["detail"]


async def test_a_body_under_the_limit_is_served(keyed: Served) -> None:
    async with openai.AsyncOpenAI(api_key=KEY, base_url=keyed.http + "/v1", max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "a" * (LIMIT_MB << 19)}],  # half the limit
        )
    assert reply.choices[0].message.content


NESTED = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", f'{{"model": "fake-model", "messages": {NESTED}}}'),
        ("/v1/messages", f'{{"model": "fake-model", "max_tokens": 5, "messages": {NESTED}}}'),
        ("/v1/responses", f'{{"model": "fake-model", "input": {NESTED}}}'),
        ("/llmchat/connect", f'{{"user_id": "ada", "server": {NESTED}}}'),
        ("/v1/embeddings", f'{{"model": "fake-model", "input": {NESTED}}}'),
    ],
)
async def test_json_nested_ten_thousand_deep_is_a_400_naming_the_problem(
    keyed: Served, path: str, body: str
) -> None:
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient() as http:
        response = await http.post(keyed.http + path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "recursion" in response.text.lower() or "deep" in response.text.lower()


async def test_metrics_and_the_api_documents_need_a_key(keyed: Served) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
            refused = await http.get(keyed.http + path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["type"] == "authentication_error"
            wrong = await http.get(keyed.http + path, headers={"authorization": "Bearer sk-wrong"})
            assert wrong.status_code == 401, path
            served = await http.get(keyed.http + path, headers={"authorization": f"Bearer {KEY}"})
            assert served.status_code == 200, path
        health = await http.get(keyed.http + "/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "providers": {}})


async def test_grpc_reflection_needs_a_key_and_health_does_not(keyed: Served) -> None:
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in reflection.ServerReflectionInfo(iter([ask])):
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([ask]), metadata=(("authorization", f"Bearer {KEY}"),)
            )
        ]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "llmservice.v1.LLMService" in names


async def test_public_parts_answer_without_a_key() -> None:
    public = {**PRINCIPALS["auth"], "public": ["health", "reflection", "metrics", "docs"]}
    async with serve({"auth": public}) as served:
        async with httpx.AsyncClient() as http:
            for path in ("/metrics", "/openapi.json", "/health"):
                assert (await http.get(served.http + path)).status_code == 200, path
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            assert [r async for r in reflection.ServerReflectionInfo(iter([ask]))]


async def test_grpc_refuses_a_message_over_the_limit(keyed: Served) -> None:
    request = pb.LLMChatRequest(
        model="fake-model", messages=[pb.ChatMessage(role="user", content="a" * (2 * LIMIT_MB << 20))]
    )
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.LLMServiceStub(channel).Chat(
                request, metadata=(("authorization", f"Bearer {KEY}"),)
            )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_open_local_mode_answers_loopback_names_only(open_local: Served) -> None:
    async with httpx.AsyncClient() as http:
        for host in ("localhost", f"localhost:{open_local.port}", f"127.0.0.1:{open_local.port}", "[::1]:80"):
            ok = await http.get(open_local.http + "/v1/models", headers={"host": host})
            assert ok.status_code == 200, host
        # A name an attacker's DNS points at 127.0.0.1 (rebinding): the page's own name comes along.
        rebound = await http.get(open_local.http + "/v1/models", headers={"host": "attacker.example:8000"})
        assert rebound.status_code == 403
        assert "server.allowed_hosts" in rebound.json()["error"]["message"]
        page = await http.get(open_local.http + "/chat", headers={"host": "attacker.example"})
        assert page.status_code == 403


async def test_open_local_mode_refuses_pages_of_other_sites(open_local: Served) -> None:
    # What a page on another site can send without a CORS preflight: a text/plain POST.
    body = json.dumps(CHAT)
    async with httpx.AsyncClient() as http:
        for origin in ("https://attacker.example", "http://127.0.0.1.attacker.example", "null"):
            refused = await http.post(
                open_local.http + "/v1/chat/completions",
                content=body,
                headers={"origin": origin, "content-type": "text/plain"},
            )
            assert refused.status_code == 403, origin
            assert "server.allowed_origins" in refused.json()["error"]["message"]
        refused = await http.post(
            open_local.http + "/llmchat/connect",
            content=json.dumps({"user_id": "ada", "server": {"url": "http://127.0.0.1:1/mcp"}}),
            headers={"origin": "https://attacker.example", "content-type": "text/plain"},
        )
        assert refused.status_code == 403
        assert "server.allowed_origins" in refused.json()["detail"]
        # Its own page, a local one and one the operator allowed are served.
        for origin in (open_local.http, "http://localhost:3000", "https://app.example"):
            ok = await http.post(
                open_local.http + "/v1/chat/completions", json=CHAT, headers={"origin": origin}
            )
            assert ok.status_code == 200, origin


async def test_health_can_be_private_too() -> None:
    private = {**PRINCIPALS["auth"], "public": []}
    async with serve({"auth": private}) as served, httpx.AsyncClient() as http:
        for path in ("/health", "/health/live"):
            assert (await http.get(served.http + path)).status_code == 401, path
            keyed = await http.get(served.http + path, headers={"authorization": f"Bearer {KEY}"})
            assert keyed.status_code == 200, path
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_http_health_says_what_the_service_says(keyed: Served) -> None:
    async with httpx.AsyncClient() as http:
        await keyed.server.set_serving(False)
        try:
            down = await http.get(keyed.http + "/health")
            live = await http.get(keyed.http + "/health/live")
        finally:
            await keyed.server.set_serving(True)
        up = await http.get(keyed.http + "/health")
    assert (down.status_code, down.json()) == (503, {"status": "unavailable"})
    assert (live.status_code, up.status_code) == (200, 200)
