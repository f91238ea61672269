"""Two service processes sharing one Redis: a session connected on one goes on on the other,
even once the first is gone; only the owner keeps the session's connection open."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import redis

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as pb_grpc

from ..servers import MCP_TOKEN, ServeProcess, demo_mcp_server, llmservice_serve, redis_server

LLM = pb.LLMConfig(provider="llamacpp", temperature=0, max_tokens=64)  # a tool call takes ~31


def settings(redis_url: str) -> Iterator[str]:
    yield f"cache.redis_url={redis_url}"
    yield "llmchat.secret_key=shared-by-every-worker"
    yield 'llmchat.allowed_hosts=["127.0.0.1"]'
    yield "llmchat.max_steps=2"
    yield "log_level=WARNING"


def owned_by(owner: str | None, worker: ServeProcess) -> bool:
    return owner is not None and f":{worker.proc.pid}:" in owner


async def wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    assert condition()


async def test_a_session_moves_between_workers_and_survives_its_first() -> None:
    with redis_server() as store, demo_mcp_server() as mcp_url:
        config = [*settings(store.url), "llmchat.session_ttl=3"]
        with llmservice_serve(*config) as first, llmservice_serve(*config) as second:
            async with (
                grpc.aio.insecure_channel(first.target) as a,
                grpc.aio.insecure_channel(second.target) as b,
            ):
                on_first, on_second = pb_grpc.ChatSessionServiceStub(a), pb_grpc.ChatSessionServiceStub(b)
                server = pb.McpServer(url=mcp_url, auth_token=MCP_TOKEN)
                connected = await on_first.Connect(pb.ConnectRequest(user_id="w-1", server=server, llm=LLM))
                assert connected.tool_count == 4
                owner = redis.Redis.from_url(store.url, decode_responses=True)
                assert owned_by(owner.get("llmchat:owner:local:w-1"), first)
                # The second worker has no connection: it serves the turn from the record in
                # Redis, with a connection for that turn only, and leaves the session to its owner.
                reply = await on_second.Chat(pb.ChatRequest(user_id="w-1", message="Add 2 and 2."))
                assert reply.tool_used
                assert not owned_by(owner.get("llmchat:owner:local:w-1"), second)
                first.proc.kill()
                first.proc.wait()
                await wait_until(
                    lambda: not owner.exists("llmchat:owner:local:w-1")
                )  # the dead owner's key expires
                again = await on_second.Chat(pb.ChatRequest(user_id="w-1", message="Add 3 and 3."))
                assert again.response is not None
                assert owned_by(owner.get("llmchat:owner:local:w-1"), second)  # it took over
                lines = [json.loads(line) for line in owner.lrange("llmchat:history:local:w-1", 0, -1)]
                assert [line["content"] for line in lines if line["role"] == "user"] == [
                    "Add 2 and 2.",
                    "Add 3 and 3.",
                ]
                owner.close()


def children(pid: int, needle: str) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", needle], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


async def test_only_the_owner_keeps_a_stdio_server_running() -> None:
    with redis_server() as store:
        config = [
            *settings(store.url),
            "llmchat.session_ttl=2",  # the janitor sweeps every second
            f'llmchat.stdio_servers={{"time": ["{sys.executable}", "-m", "mcp_server_time"]}}',
        ]
        with llmservice_serve(*config) as first, llmservice_serve(*config) as second:
            async with (
                grpc.aio.insecure_channel(first.target) as a,
                grpc.aio.insecure_channel(second.target) as b,
            ):
                on_first, on_second = pb_grpc.ChatSessionServiceStub(a), pb_grpc.ChatSessionServiceStub(b)
                owner = redis.Redis.from_url(store.url, decode_responses=True)
                time_server = pb.McpServer(url="time", transport="stdio")
                connect = pb.ConnectRequest(user_id="w-2", server=time_server, llm=LLM)
                await on_first.Connect(connect)
                assert children(first.proc.pid, "mcp_server_time")  # the first runs the MCP server
                # Idle for session_ttl: the first closes it and lets the session go.
                await wait_until(lambda: not children(first.proc.pid, "mcp_server_time"))
                assert not owner.exists("llmchat:owner:local:w-2")
                turn = pb.ChatRequest(user_id="w-2", message="What time is it?")
                await on_second.Chat(turn)
                assert owned_by(owner.get("llmchat:owner:local:w-2"), second)  # the second took it
                owner.close()
