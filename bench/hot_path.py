"""The request hot path against its floors, with one worker and with two.

gRPC Chat, StreamChat and the HTTP shim at 1 and 32 callers, beside a bare forwarder of
each kind.
Every side forwards to the same local upstream (answering after a fixed delay) and is
measured in the same alternating rounds: the upstream called directly (the bench's own
raw POST, the service's HTTP client); the floor, a bare forwarder doing nothing else
(bench.grpc_floor for gRPC, bench.http_floor on uvicorn for HTTP); `llmservice serve`
with one worker; and with two (server.workers = 2, sharing the ports with SO_REUSEPORT,
state in a Redis of its own). Callers spread over 8 connections, so that the kernel has
connections to spread over workers. Latency is p50 / p95 / p99 from every call of every
round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import grpc
import httpx
import httpx_sse
import openai

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.providers.remote.aiohttp_transport import AiohttpClient

from . import grpc_floor, http_floor
from .engine_vs_llama_server import free_port
from .gateway_overhead import BODY, DELAY_MS, MESSAGES, PATH, STREAM_BODY, upstream_running
from .report import publish
from .serve_process import llmservice_serve, pct

CALLS = {1: 200, 32: 20}  # per caller per round
CONNECTIONS = 8  # gRPC channels the callers share (HTTP: aiohttp's pool makes one per caller)
SIDES = ("direct", "floor", "workers_1", "workers_2")
Call = Callable[[], Awaitable[None]]
NOTES = (
    "The floors are the hop alone: a bare forwarder pays for the server, its client and the "
    "event loop, and nothing else. What llmservice adds beyond a floor is its own work per "
    "request (parsing and validating the body, the protobuf and domain conversions, auth, "
    "limits, routing, the scheduler, metrics, the request's span and usage line); where that "
    "goes, layer by layer, is the profile's table below. At 1 caller each request starts after "
    "20 ms asleep, on cold caches, so every microsecond of that work weighs more than in a "
    "loaded process. Two workers gain little on this machine: the bench client, the upstream "
    "and the floors run on the same 2 cores, so there is no idle core for a second worker."
)


@contextlib.contextmanager
def redis_running() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (`make test` installs it)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not answers(port):
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


def channels(target: str) -> list[grpc.aio.Channel]:
    """CONNECTIONS channels, each with a connection of its own (no shared subchannel)."""
    return [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CONNECTIONS)
    ]


async def sample(calls: list[Call], callers: int) -> tuple[list[float], float]:
    """Latencies (ms) of every call, and the calls per second over the whole sample; caller i
    makes its calls one after another with calls[i % len(calls)]."""

    async def caller(call: Call) -> list[float]:
        out = []
        for _ in range(CALLS[callers]):
            start = time.perf_counter()
            await call()
            out.append((time.perf_counter() - start) * 1000)
        return out

    start = time.perf_counter()
    runs = await asyncio.gather(*(caller(calls[i % len(calls)]) for i in range(callers)))
    wall = time.perf_counter() - start
    return [ms for run in runs for ms in run], callers * CALLS[callers] / wall


def grpc_calls(stubs: list[pb_grpc.LLMServiceStub], stream: bool) -> list[Call]:
    request = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content=MESSAGES[0]["content"])])

    def chat(stub: pb_grpc.LLMServiceStub) -> Call:
        async def call() -> None:
            await stub.Chat(request)

        return call

    def first_token(stub: pb_grpc.LLMServiceStub) -> Call:
        async def call() -> None:
            stream_call = stub.StreamChat(request)
            async for chunk in stream_call:
                if chunk.token:
                    break
            stream_call.cancel()

        return call

    return [(first_token if stream else chat)(stub) for stub in stubs]


def http_call(http: aiohttp.ClientSession, url: str) -> Call:
    async def call() -> None:
        async with http.post(f"{url}/chat/completions", json=BODY) as response:
            response.raise_for_status()
            await response.read()

    return call


def direct_calls(client: openai.AsyncOpenAI, stream: bool) -> list[Call]:
    async def chat() -> None:
        (await client.post(PATH, body=BODY, cast_to=httpx.Response)).json()

    async def first_token() -> None:
        response = await client.post(PATH, body=STREAM_BODY, cast_to=httpx.Response, stream=True)
        try:
            async for sse in httpx_sse.EventSource(response).aiter_sse():
                json.loads(sse.data)
                break
        finally:
            await response.aclose()

    return [first_token if stream else chat]


@contextlib.asynccontextmanager
async def service(upstream: str, workers: int, redis: str) -> AsyncIterator[tuple[str, str]]:
    """`llmservice serve` in front of the upstream; yields (gRPC target, shim base URL)."""
    settings = [
        "provider=openai_compatible",
        f"openai_compatible.base_url={upstream}",
        "openai_compatible.model=fixed",
        f"server.workers={workers}",
    ]
    if workers > 1:
        settings += [f"cache.redis_url={redis}"]
    async with llmservice_serve(*settings, http=True) as served:
        yield f"127.0.0.1:{served.grpc_port}", f"{served.http_url}/v1"


async def measure(rounds: int) -> dict[str, object]:
    rows: list[list[str]] = []
    figures: dict[str, float] = {}
    with upstream_running() as upstream, redis_running() as redis:
        async with contextlib.AsyncExitStack() as stack:
            floor_port = free_port()
            await stack.enter_async_context(grpc_floor.floor_process(floor_port, upstream))
            floor_http = stack.enter_context(http_floor.floor_running(free_port(), upstream))
            one = await stack.enter_async_context(service(upstream, 1, redis))
            two = await stack.enter_async_context(service(upstream, 2, redis))
            http = await stack.enter_async_context(
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=60),
                    connector=aiohttp.TCPConnector(limit=0),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
            )
            direct = openai.AsyncOpenAI(
                api_key="none", base_url=upstream, max_retries=0, http_client=AiohttpClient(timeout=30)
            )
            stack.push_async_callback(direct.close)
            opened: list[grpc.aio.Channel] = []
            for target in (f"127.0.0.1:{floor_port}", one[0], two[0]):
                opened += channels(target)
            for channel in opened:
                stack.push_async_callback(channel.close)
            stubs = [pb_grpc.LLMServiceStub(c) for c in opened]
            by_side = {
                "floor": stubs[:CONNECTIONS],
                "workers_1": stubs[CONNECTIONS : 2 * CONNECTIONS],
                "workers_2": stubs[2 * CONNECTIONS :],
            }
            surfaces: dict[str, dict[str, list[Call]]] = {
                "grpc_chat": {
                    "direct": direct_calls(direct, False),
                    **{s: grpc_calls(v, False) for s, v in by_side.items()},
                },
                "grpc_ttft": {
                    "direct": direct_calls(direct, True),
                    **{s: grpc_calls(v, True) for s, v in by_side.items()},
                },
                "shim_chat": {
                    "direct": [http_call(http, upstream)],
                    "floor": [http_call(http, floor_http)],
                    "workers_1": [http_call(http, one[1])],
                    "workers_2": [http_call(http, two[1])],
                },
            }
            for surface, sides in surfaces.items():
                for callers in (1, 32):
                    latencies: dict[str, list[float]] = {s: [] for s in SIDES}
                    rates: dict[str, list[float]] = {s: [] for s in SIDES}
                    for calls in sides.values():
                        await sample(calls, callers)  # warm: connections, caches, first-call imports
                    for _ in range(rounds):
                        for side in SIDES:
                            ms, rate = await sample(sides[side], callers)
                            latencies[side] += ms
                            rates[side].append(rate)
                    key = f"{surface}_{callers}"
                    cells = []
                    for side in SIDES:
                        p50, p95, p99 = (pct(latencies[side], q) for q in (0.5, 0.95, 0.99))
                        rps = sorted(rates[side])[len(rates[side]) // 2]
                        figures.update(
                            {
                                f"{key}_{side}_p50_ms": p50,
                                f"{key}_{side}_p95_ms": p95,
                                f"{key}_{side}_p99_ms": p99,
                                f"{key}_{side}_rps": rps,
                            }
                        )
                        cells.append(f"{p50:.2f} / {p95:.2f} / {p99:.2f}; {rps:.0f}")
                    rows.append(
                        [f"{surface.replace('_', ' ')}, {callers} caller{'s' if callers > 1 else ''}", *cells]
                    )
    return report(rounds, rows, figures)


def report(rounds: int, rows: list[list[str]], figures: dict[str, float]) -> dict[str, object]:
    checks: list[str] = []
    for surface in ("grpc_chat", "grpc_ttft", "shim_chat"):
        k = f"{surface}_1"
        direct = figures[f"{k}_direct_p50_ms"]
        ours, floor = figures[f"{k}_workers_1_p50_ms"] - direct, figures[f"{k}_floor_p50_ms"] - direct
        figures[f"{k}_added_vs_floor"] = ours / floor
        checks.append(
            f"{surface} at 1 caller adds {ours:.2f} ms at p50 where the floor adds {floor:.2f}: "
            f"{ours / floor:.2f}x (target <= 1.2: {'met' if ours / floor <= 1.2 else 'NOT met'})"
        )
    for surface in ("grpc_chat", "grpc_ttft", "shim_chat"):
        k = f"{surface}_32"
        for side in ("workers_1", "workers_2"):
            ratio = figures[f"{k}_{side}_rps"] / figures[f"{k}_floor_rps"]
            tail = figures[f"{k}_{side}_p95_ms"] / figures[f"{k}_{side}_p50_ms"]
            figures[f"{k}_{side}_rps_vs_floor"], figures[f"{k}_{side}_p95_over_p50"] = ratio, tail
        r1, r2 = figures[f"{k}_workers_1_rps_vs_floor"], figures[f"{k}_workers_2_rps_vs_floor"]
        t1, t2 = figures[f"{k}_workers_1_p95_over_p50"], figures[f"{k}_workers_2_p95_over_p50"]
        checks.append(
            f"{surface} at 32 callers: {r1:.2f}x the floor's req/s with one worker, {r2:.2f}x with two "
            f"(target >= 0.8: {'met' if max(r1, r2) >= 0.8 else 'NOT met'}); p95 / p50 {t1:.2f} and "
            f"{t2:.2f} (target <= 2: {'met' if max(t1, t2) <= 2 else 'NOT met'})"
        )
    return {
        "title": "The hot path against its floors, one worker and two",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"local OpenAI-compatible upstream answering after {DELAY_MS:g} ms; {rounds} alternating rounds "
            f"of {CALLS[1]} calls at 1 caller and {CALLS[32]} per caller at 32; callers share "
            f"{CONNECTIONS} gRPC connections (HTTP: one per caller); client, upstream, floors and "
            "services all on the same cores"
        ),
        "columns": [
            "direct: p50 / p95 / p99 ms; req/s",
            "bare forwarder (the floor)",
            "llmservice, 1 worker",
            "llmservice, 2 workers",
        ],
        "rows": rows,
        "verdict": "; ".join(checks) + ".",
        "notes": NOTES,
        "figures": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    publish("hot_path", asyncio.run(measure(args.rounds)))


if __name__ == "__main__":
    main()
