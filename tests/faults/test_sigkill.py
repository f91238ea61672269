"""`llmservice serve` SIGKILLed with streams in flight on every surface: each client gets a
clean error at once (gRPC UNAVAILABLE, a connection error over HTTP), never a hang or a
stream that looks finished; a new process on the same Redis serves every session at once,
with its history, and owns them once the dead owner's keys expire. (One session moving
between two live workers is test_sessions_workers.py's; this is about a worker lost under load.)

The load is the bundled model's (gRPC StreamChat and the openai SDK's streams); the
sessions talk to a local OpenAI upstream (tests/fakes/), whose slow stream keeps one
session's turn in flight when the kill comes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import grpc
import httpx
import openai
import pytest
import redis

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.service.sessions import history, ownership, records

from ..fakes.openai_server import Reply, fake_openai
from ..servers import MCP_TOKEN, ServeProcess, demo_mcp_server, llmservice_serve, redis_server
from .conftest import ONE_THREAD

STORY = "Tell a long story."  # the bundled model writes on to max_tokens
USERS = ("k-1", "k-2", "k-3")  # sessions with a finished turn before the kill
CUT = "k-cut"  # the session whose turn the kill cuts
SHORT = Reply(text="Hello there")
LONG = Reply(text=" ".join(f"w{i}" for i in range(300)), pace_s=0.1)  # 30 s of tokens
ERROR_WITHIN_S = 15  # the kill must end every stream in this time, however busy the machine


def settings(redis_url: str, upstream_url: str) -> list[str]:
    return [
        f"cache.redis_url={redis_url}",
        "llmchat.secret_key=shared-by-every-worker",
        'llmchat.allowed_hosts=["127.0.0.1"]',
        "llmchat.max_steps=1",  # one model call a turn
        "llmchat.session_ttl=5",  # the dead owner's keys outlive the new process's start
        "openai.api_key=k",
        f"openai.base_url={upstream_url}/v1",
        "openai.model=fake-model",
        "llamacpp.n_slots=4",  # four streams decode, the others wait their turn: both are cut
        "log_level=WARNING",
        ONE_THREAD,
    ]


def key(template: str, user_id: str) -> str:
    return template.format(records.session_key("local", user_id))


async def connect(http: httpx.AsyncClient, user_id: str, mcp_url: str) -> None:
    body = {
        "user_id": user_id,
        "server": {"url": mcp_url, "auth_token": MCP_TOKEN},
        "llm": {"provider": "openai"},
    }
    reply = await http.post("/llmchat/connect", json=body)
    assert reply.status_code == 200, reply.text


async def turn(http: httpx.AsyncClient, user_id: str, message: str) -> None:
    reply = await http.post("/llmchat/chat", json={"user_id": user_id, "message": message})
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"] == SHORT.text


async def grpc_stream(stub: pb_grpc.LLMServiceAsyncStub) -> AsyncIterator[str]:
    request = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content=STORY)], max_tokens=400)
    async for chunk in stub.StreamChat(request):
        yield "done" if chunk.done else chunk.token


async def openai_stream(client: openai.AsyncOpenAI) -> AsyncIterator[str]:
    stream = await client.chat.completions.create(
        model="", messages=[{"role": "user", "content": STORY}], max_tokens=400, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            yield "done"
        elif chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


async def llmchat_stream(http: httpx.AsyncClient) -> AsyncIterator[str]:
    body = {"user_id": CUT, "message": "Go on.", "streaming": True}
    async with http.stream("POST", "/llmchat/chat", json=body) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                yield "done" if line in ("event: final", "event: error") else line


class Watched:
    """A stream read to its end in a task: whether an item came, whether it looked finished."""

    def __init__(self, name: str, stream: Callable[[], AsyncIterator[str]]) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.finished = False  # it ended as a finished (or failed-and-said-so) stream does
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: Callable[[], AsyncIterator[str]]) -> None:
        async for item in stream():
            self.started.set()
            self.finished = self.finished or item == "done"


async def test_sigkill_under_load_ends_every_stream_with_an_error_and_a_new_process_takes_over() -> None:
    script = (SHORT,) * len(USERS) + (LONG, SHORT)  # the turns before the kill, the cut one, the rest
    with redis_server() as store, demo_mcp_server() as mcp_url, fake_openai(*script) as upstream:
        config = settings(store.url, upstream.url)
        with llmservice_serve(*config, http=True) as first:
            async with (
                httpx.AsyncClient(base_url=first.base_url, timeout=120) as http,
                grpc.aio.insecure_channel(first.target) as channel,
                openai.AsyncOpenAI(api_key="unused", base_url=first.base_url + "/v1", max_retries=0) as sdk,
            ):
                for user_id in (*USERS, CUT):
                    await connect(http, user_id, mcp_url)
                await asyncio.gather(*(turn(http, u, "Say hi.") for u in USERS))

                stub = pb_grpc.LLMServiceStub(channel)
                local = [Watched(f"grpc-{i}", lambda: grpc_stream(stub)) for i in range(4)]
                local += [Watched(f"openai-{i}", lambda: openai_stream(sdk)) for i in range(3)]
                cut = Watched("llmchat", lambda: llmchat_stream(http))
                streams = [*local, cut]
                # Kill once the session's turn and four of the seven model streams are streaming
                # (the other three wait for a slot).
                deadline = time.monotonic() + 90
                while not cut.started.is_set() or sum(s.started.is_set() for s in local) < 4:
                    ended = [(s.name, s.task.exception()) for s in streams if s.task.done()]
                    assert not ended, f"streams ended before the kill: {ended}"
                    assert time.monotonic() < deadline, "the streams never started"
                    await asyncio.sleep(0.05)
                first.proc.kill()
                killed_at = time.monotonic()
                _, pending = await asyncio.wait([s.task for s in streams], timeout=ERROR_WITHIN_S)
                assert not pending, f"streams still open {ERROR_WITHIN_S} s after the kill"
                assert time.monotonic() - killed_at < ERROR_WITHIN_S
                for s in streams:
                    assert not s.finished, f"{s.name} looked finished"
                    error = s.task.exception()
                    if s.name.startswith("grpc"):
                        assert isinstance(error, grpc.aio.AioRpcError), (s.name, repr(error))
                        assert error.code() == grpc.StatusCode.UNAVAILABLE, (s.name, error)
                    elif s.name.startswith("openai"):  # mid-stream: httpx's; waiting for headers: the SDK's
                        assert isinstance(error, httpx.RemoteProtocolError | openai.APIConnectionError), (
                            s.name,
                            repr(error),
                        )
                    else:
                        assert isinstance(error, httpx.RemoteProtocolError), (s.name, repr(error))
                # New calls to the dead process fail at once too.
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Chat(pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Hi")]))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                with pytest.raises(openai.APIConnectionError):
                    await sdk.models.list()
        assert first.proc.returncode == -9
        deadline = time.monotonic() + 5
        while upstream.abandoned < 1:  # the fake notices at its next word
            assert time.monotonic() < deadline, "the cut turn's upstream stream was left open"
            await asyncio.sleep(0.05)
        assert upstream.abandoned == 1  # the cut turn's upstream stream went with the process

        with llmservice_serve(*config, http=True) as second:
            await takes_over(second, store.url, dead=first.proc.pid)


async def takes_over(second: ServeProcess, redis_url: str, dead: int) -> None:
    """Every session goes on on `second` at once, its history whole; the cut turn left nothing
    half-written; once the dead owner's keys expire, `second` owns them."""
    async with httpx.AsyncClient(base_url=second.base_url, timeout=120) as http:
        with redis.Redis.from_url(redis_url, decode_responses=True) as view:
            await asyncio.gather(*(turn(http, u, "Say bye.") for u in (*USERS, CUT)))
            for user_id in USERS:
                lines = [json.loads(x) for x in view.lrange(key(history.KEY, user_id), 0, -1)]
                assert [(x["role"], x["content"]) for x in lines] == [
                    ("user", "Say hi."),
                    ("assistant", SHORT.text),
                    ("user", "Say bye."),
                    ("assistant", SHORT.text),
                ]
            # The cut turn wrote nothing: its history is the turn after only.
            lines = [json.loads(x) for x in view.lrange(key(history.KEY, CUT), 0, -1)]
            assert [(x["role"], x["content"]) for x in lines] == [
                ("user", "Say bye."),
                ("assistant", SHORT.text),
            ]

            deadline = time.monotonic() + 30
            while any(f":{dead}:" in (view.get(key(ownership.OWNER, u)) or "") for u in (*USERS, CUT)):
                assert time.monotonic() < deadline, "the dead owner's keys never expired"
                await asyncio.sleep(0.2)
            await asyncio.gather(*(turn(http, u, "Say hi again.") for u in (*USERS, CUT)))
            pid = f":{second.proc.pid}:"
            assert all(pid in (view.get(key(ownership.OWNER, u)) or "") for u in (*USERS, CUT))
