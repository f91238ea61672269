"""What the service adds over calling an upstream directly: Chat latency and StreamChat time to first token.

The upstream is a local OpenAI-compatible server answering after a fixed delay, in its
own process; the service (`llmservice serve`, provider openai_compatible) runs in
another. The direct side calls the upstream the way the service's own provider does: a
plain POST through the openai client's raw `post` (cast_to=httpx.Response, no typed
request transform or response models) on the service's aiohttp transport, the reply
read as JSON, the stream through httpx-sse. The typed `chat.completions.create`
costs over a millisecond a call, which would hide the service's own overhead. The
other side calls the service over gRPC. Rounds alternate between the two, at 1
caller and at 32 concurrent callers. `--smoke` runs a few calls and prints instead
of publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import httpx
import httpx_sse
import openai

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.providers.remote.aiohttp_transport import AiohttpClient

from . import grpc_floor
from .engine_vs_llama_server import free_port
from .report import publish
from .serve_process import llmservice_serve, pct, process_answering

DELAY_MS = 20.0
CALLS_PER_CALLER = {1: 200, 32: 20}
MESSAGES = [{"role": "user", "content": "What is the answer?"}]
PATH = "/chat/completions"
BODY = {"model": "fixed", "messages": MESSAGES, "stream": False}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}  # the provider's own


@contextlib.contextmanager
def upstream_running() -> Iterator[str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.fixed_delay_upstream",
        "--port",
        str(port),
        "--delay-ms",
        str(DELAY_MS),
    ]
    with process_answering(argv, lambda: httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.asynccontextmanager
async def service_running(upstream: str) -> AsyncIterator[pb_grpc.LLMServiceStub]:
    settings = (
        "provider=openai_compatible",
        f"openai_compatible.base_url={upstream}",
        "openai_compatible.model=fixed",
    )
    async with (
        llmservice_serve(*settings) as served,
        grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel,
    ):
        yield pb_grpc.LLMServiceStub(channel)


async def timed(call: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def sample(call: Callable[[], Awaitable[None]], callers: int) -> list[float]:
    """Each caller makes its calls one after another; all callers at once."""

    async def caller() -> list[float]:
        return [await timed(call) for _ in range(CALLS_PER_CALLER[callers])]

    runs = await asyncio.gather(*(caller() for _ in range(callers)))
    return [ms for run in runs for ms in run]


async def measure(rounds: int) -> dict[str, object]:
    rows: list[list[str]] = []
    figures: dict[str, float] = {}
    with upstream_running() as upstream:
        direct = openai.AsyncOpenAI(
            api_key="none",
            base_url=upstream,
            max_retries=0,
            http_client=AiohttpClient(timeout=30),  # the service's own HTTP client
        )
        async with service_running(upstream) as stub:

            async def direct_chat() -> None:
                response = await direct.post(PATH, body=BODY, cast_to=httpx.Response)
                response.json()

            async def direct_ttft() -> None:
                response = await direct.post(PATH, body=STREAM_BODY, cast_to=httpx.Response, stream=True)
                try:
                    async for sse in httpx_sse.EventSource(response).aiter_sse():
                        json.loads(sse.data)  # the first token, parsed as the provider does
                        break
                finally:
                    await response.aclose()

            request = pb.LLMChatRequest(
                messages=[pb.ChatMessage(role="user", content=MESSAGES[0]["content"])]
            )

            async def service_chat() -> None:
                await stub.Chat(request)

            async def service_ttft() -> None:
                call = stub.StreamChat(request)
                async for _ in call:
                    break
                call.cancel()

            for callers in (1, 32):
                for label, d_call, s_call in (
                    ("Chat latency", direct_chat, service_chat),
                    ("StreamChat time to first token", direct_ttft, service_ttft),
                ):
                    await sample(d_call, callers)  # warm both paths
                    await sample(s_call, callers)
                    d_all: list[float] = []
                    s_all: list[float] = []
                    for _ in range(rounds):
                        d_all += await sample(d_call, callers)
                        s_all += await sample(s_call, callers)
                    d50, s50 = pct(d_all, 0.5), pct(s_all, 0.5)
                    d95, s95 = pct(d_all, 0.95), pct(s_all, 0.95)
                    key = f"{'chat' if label.startswith('Chat') else 'ttft'}_{callers}"
                    figures[f"{key}_added_p50_ms"] = s50 - d50
                    rows.append(
                        [
                            f"{label}, {callers} caller{'s' if callers > 1 else ''}, p50 / p95 ms",
                            f"{d50:.2f} / {d95:.2f}",
                            f"{s50:.2f} / {s95:.2f}",
                            f"{s50 - d50:+.2f} / {s95 - d95:+.2f}",
                        ]
                    )
            # The floor: one gRPC hop to a server that only forwards, as the direct side calls.
            async with grpc_floor.floor_running(free_port(), upstream) as floor:

                async def floor_chat() -> None:
                    await floor.Chat(request)

                await sample(floor_chat, 1)
                d_all, f_all = [], []
                for _ in range(rounds):
                    d_all += await sample(direct_chat, 1)
                    f_all += await sample(floor_chat, 1)
            d50, f50, d95, f95 = pct(d_all, 0.5), pct(f_all, 0.5), pct(d_all, 0.95), pct(f_all, 0.95)
            figures["floor_chat_1_added_p50_ms"] = f50 - d50
            rows.append(
                [
                    "floor: a bare grpc.aio server that only forwards, Chat, 1 caller, p50 / p95 ms",
                    f"{d50:.2f} / {d95:.2f}",
                    f"{f50:.2f} / {f95:.2f}",
                    f"{f50 - d50:+.2f} / {f95 - d95:+.2f}",
                ]
            )
            # What one gRPC round trip costs with no upstream: back to back, and after the
            # processes slept for the upstream's delay, as they do in every call above.
            async with grpc_floor.floor_running(free_port(), "") as echo:

                async def echo_chat() -> None:
                    await echo.Chat(request)

                async def echo_after_idle() -> float:
                    await asyncio.sleep(DELAY_MS / 1000)
                    return await timed(echo_chat)

                await sample(echo_chat, 1)
                hot: list[float] = []
                idle: list[float] = []
                for _ in range(rounds):
                    hot += await sample(echo_chat, 1)
                    idle += [await echo_after_idle() for _ in range(CALLS_PER_CALLER[1])]
            figures["echo_hot_p50_ms"], figures["echo_idle_p50_ms"] = pct(hot, 0.5), pct(idle, 0.5)
            rows.append(
                [
                    "a bare gRPC round trip (echo, no upstream): back to back / after 20 ms idle, p50 ms",
                    "",
                    f"{figures['echo_hot_p50_ms']:.2f} / {figures['echo_idle_p50_ms']:.2f}",
                    "",
                ]
            )
        await direct.close()
    met = figures["chat_1_added_p50_ms"] <= 1.0 and figures["ttft_1_added_p50_ms"] <= 1.0
    return {
        "title": "Gateway overhead over a direct upstream call",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"local OpenAI-compatible upstream answering after {DELAY_MS:g} ms, {rounds} alternating "
            f"rounds, {CALLS_PER_CALLER[1]} sequential calls per round at 1 caller and "
            f"{CALLS_PER_CALLER[32]} per caller at 32"
        ),
        "columns": ["direct (raw POST, same transport)", "through llmservice (gRPC)", "added p50 / p95"],
        "rows": rows,
        "verdict": (
            f"Target: p50 added <= 1 ms at 1 caller. Measured {figures['chat_1_added_p50_ms']:.2f} ms "
            f"(Chat) and {figures['ttft_1_added_p50_ms']:.2f} ms (time to first token): "
            f"{'met' if met else 'NOT met'}. One bare gRPC hop on this machine adds "
            f"{figures['floor_chat_1_added_p50_ms']:.2f} ms by itself (the floor row); a bare round trip "
            f"takes {figures['echo_hot_p50_ms']:.2f} ms back to back and "
            f"{figures['echo_idle_p50_ms']:.2f} ms once the processes have slept for the upstream's "
            "delay (the last row)."
        ),
        "figures": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few calls; print, do not publish")
    args = parser.parse_args()
    if args.smoke:
        CALLS_PER_CALLER.update({1: 5, 32: 1})
        print(json.dumps(asyncio.run(measure(1)), indent=2))
        return
    publish("gateway_overhead", asyncio.run(measure(args.rounds)))


if __name__ == "__main__":
    main()
