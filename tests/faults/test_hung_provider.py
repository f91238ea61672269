"""A remote provider that accepts the connection and never answers a byte: every call to it
ends in the provider's timeout with the documented error, tried once (a read timeout is not
retried: the upstream may be working on it), while the local model goes on serving.

Errors as the table of docs/ARCHITECTURE.md has them: DEADLINE_EXCEEDED over gRPC; over
/llmchat a 504 in the documented wording. A route whose one deployment hangs answers 504
too: a route whose deployments all timed out is DEADLINE_EXCEEDED (service/routing.py),
and its message names the route and what the last deployment said.

Listing the models waits for it at most `listing.timeout_s` (2 s), after which it shows
its default model, not loaded; a /llmchat connect to the local model asks it nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from ..fakes.silent_server import Silent, silent_server
from ..servers import MCP_TOKEN, ServeProcess, demo_mcp_server, llmservice_serve
from .conftest import ONE_THREAD

TIMEOUT_S = 6.0  # openai.timeout_s: no byte for this long is a provider timeout; local calls come first
SLACK_S = 10.0  # how much later than the timeout an answer may come on a busy machine
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi."}]
LOCAL = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Say hi.")], max_tokens=4)
TO_OPENAI = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="user", content="Say hi.")], provider="openai", max_tokens=4
)
TIMED_OUT = "provider openai did not answer in time"


if TYPE_CHECKING:  # the async stub is a type only: LLMServiceStub(an aio channel) makes one
    Clients = tuple[pb_grpc.LLMServiceAsyncStub, openai.AsyncOpenAI, httpx.AsyncClient]


@dataclass
class Served:
    upstream: Silent
    mcp_url: str
    service: ServeProcess


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """`llmservice serve` with its shim: the bundled model by default, and OpenAI at a server
    that never answers."""
    with silent_server() as upstream, demo_mcp_server() as mcp_url:
        config = [
            "openai.api_key=k",
            f"openai.base_url={upstream.url}/v1",
            "openai.model=hung-model",
            f"openai.timeout_s={TIMEOUT_S}",
            # How an OpenAI client names a provider other than the default: a route over it.
            'routes={"hung-route": ["openai"]}',
            'llmchat.allowed_hosts=["127.0.0.1"]',
            "log_level=WARNING",
            ONE_THREAD,
        ]
        with llmservice_serve(*config, http=True) as service:
            yield Served(upstream, mcp_url, service)


@pytest.fixture
async def clients(
    served: Served,
) -> AsyncIterator[Clients]:
    base = served.service.base_url
    async with (
        grpc.aio.insecure_channel(served.service.target) as channel,
        openai.AsyncOpenAI(api_key="unused", base_url=base + "/v1", max_retries=0) as sdk,
        httpx.AsyncClient(base_url=base, timeout=120) as http,
    ):
        stub = pb_grpc.LLMServiceStub(channel)
        assert (await stub.Chat(LOCAL)).content  # warm: the first request loads what it needs
        yield stub, sdk, http


@dataclass
class Ended:
    result: Any
    error: BaseException | None
    elapsed_s: float


async def timed(call: Awaitable[Any]) -> Ended:
    """What the call answered or raised, and how long it took."""
    start = time.monotonic()
    try:
        result = await call
    except Exception as exc:
        return Ended(None, exc, time.monotonic() - start)
    return Ended(result, None, time.monotonic() - start)


async def drain(stream: AsyncIterable[pb.LLMChatChunk]) -> None:
    async for _ in stream:
        pass


async def sdk_stream(client: openai.AsyncOpenAI, model: str) -> str:
    stream = await client.chat.completions.create(model=model, messages=HI, max_tokens=4, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def connect_body(served: Served, user_id: str, provider: str) -> dict[str, Any]:
    server = {"url": served.mcp_url, "auth_token": MCP_TOKEN}
    return {"user_id": user_id, "server": server, "llm": {"provider": provider}}


async def test_a_provider_that_never_answers_times_out_while_the_local_model_serves(
    served: Served, clients: Clients
) -> None:
    stub, sdk, http = clients
    upstream = served.upstream
    upstream.models = ["hung-model"]  # its model list answers; its chat never does
    connected = await http.post("/llmchat/connect", json=connect_body(served, "h-1", "openai"))
    assert connected.status_code == 200, connected.text
    asked_before = len(upstream.requests)  # whatever reached it before: the connect asks for no models

    hung: dict[str, Callable[[], Awaitable[Any]]] = {
        "grpc Chat": lambda: stub.Chat(TO_OPENAI),
        "grpc StreamChat": lambda: drain(stub.StreamChat(TO_OPENAI)),
        "http route": lambda: sdk.chat.completions.create(model="hung-route", messages=HI),
        "http route stream": lambda: sdk_stream(sdk, "hung-route"),
        "llmchat turn": lambda: http.post("/llmchat/chat", json={"user_id": "h-1", "message": "Hi"}),
    }
    tasks = {name: asyncio.create_task(timed(call())) for name, call in hung.items()}
    # Meanwhile the local model answers, over both surfaces, before any of them gives up...
    assert (await stub.Chat(LOCAL)).content
    assert await sdk_stream(sdk, "")
    done = {name: t.result() for name, t in tasks.items() if t.done()}
    assert not done, f"the local model waited for the hung provider: {done}"
    # ...and goes on serving until they have.
    while not all(t.done() for t in tasks.values()):
        assert (await stub.Chat(LOCAL)).content
    ended = {name: task.result() for name, task in tasks.items()}

    # Each call reached the provider once: a read timeout is never retried...
    assert len(upstream.requests) - asked_before == len(hung)
    deadline = time.monotonic() + 5
    while upstream.waiting:
        assert time.monotonic() < deadline, "the service kept a hung connection open"
        await asyncio.sleep(0.05)  # ...and let go of every connection it opened
    for name, end in ended.items():
        assert TIMEOUT_S - 0.5 <= end.elapsed_s <= TIMEOUT_S + SLACK_S, (name, end)
    for name in ("grpc Chat", "grpc StreamChat"):
        error = ended[name].error
        assert isinstance(error, grpc.aio.AioRpcError), (name, error)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, error)
        assert error.details() == TIMED_OUT
    for name in ("http route", "http route stream"):
        error = ended[name].error
        assert isinstance(error, openai.APIStatusError), (name, error)
        assert error.status_code == 504, (name, error)
        assert f"the last said: {TIMED_OUT}" in error.message
    turn = ended["llmchat turn"].result
    assert isinstance(turn, httpx.Response)
    assert turn.status_code == 504
    assert turn.json()["detail"] == f"Request timed out. The LLM took too long to respond. ({TIMED_OUT})"


async def test_listing_models_and_connecting_to_the_local_model_do_not_wait_for_a_hung_provider(
    served: Served, clients: Clients
) -> None:
    stub, sdk, http = clients
    served.upstream.models = None  # now its model list hangs too
    connect = http.post("/llmchat/connect", json=connect_body(served, "h-local", "llamacpp"))

    async def listing() -> list[Any]:
        return (await sdk.models.list()).data

    listed, connected = asyncio.create_task(listing()), asyncio.create_task(connect)
    _, pending = await asyncio.wait([listed, connected], timeout=TIMEOUT_S / 2)
    for task in pending:  # what has not answered by then has waited for the provider
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert not pending, f"still waiting after {TIMEOUT_S / 2:g} s: {len(pending)} of GET /v1/models, connect"
    # The hung provider's default model is still listed, and the route over it.
    assert {"hung-model", "hung-route"} <= {m.id for m in listed.result()}
    assert connected.result().status_code == 200
    # Its ask is still in flight: the next listing does not wait for it again, and says
    # the model is not ready.
    again = await timed(stub.ListModels(pb.ListModelsRequest()))
    assert again.error is None, again
    assert again.elapsed_s < TIMEOUT_S / 2, again
    assert {m.id: m.loaded for m in again.result.models if m.provider == "openai"} == {"hung-model": False}
