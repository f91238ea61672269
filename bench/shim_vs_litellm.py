"""The HTTP shim against the LiteLLM proxy, both in front of the same local upstream.

One local OpenAI-compatible upstream answers after a fixed delay; the shim (with the
service behind it, provider openai_compatible) and the LiteLLM proxy each run in their
own process in front of it. The shim runs as `llmservice serve` runs it, calling the
service in process, and again with `server.shim_in_process=false`, over loopback gRPC
(as a shim deployed on its own does). One aiohttp session drives all three the same way (direct,
through the shim, through LiteLLM; httpx's own pool cannot drive 32 concurrent clients
without stalling), rounds alternating: latency of whole replies, time
to the first content token of streams, at 1 and 32 concurrent clients, and requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from . import http_floor
from .engine_vs_llama_server import free_port
from .gateway_overhead import DELAY_MS, upstream_running
from .litellm_proxy import VERSION, litellm_running
from .report import publish
from .serve_process import llmservice_serve, pct

BODY = {"model": "fixed", "messages": [{"role": "user", "content": "What is the answer?"}]}
CALLS = {1: 150, 32: 15}


@contextlib.asynccontextmanager
async def shim_running(upstream: str, in_process: bool = True) -> AsyncIterator[str]:
    """`llmservice serve` with its shim; `in_process=False`: the shim calls it over loopback gRPC."""
    settings = (
        "provider=openai_compatible",
        f"openai_compatible.base_url={upstream}",
        "openai_compatible.model=fixed",
        f"server.shim_in_process={'true' if in_process else 'false'}",
    )
    async with llmservice_serve(*settings, http=True) as served:
        yield f"{served.http_url}/v1"


def caller(http: aiohttp.ClientSession, url: str, stream: bool) -> Callable[[], Awaitable[None]]:
    async def whole() -> None:
        async with http.post(f"{url}/chat/completions", json=BODY) as response:
            response.raise_for_status()
            await response.read()

    async def first_token() -> None:
        async with http.post(f"{url}/chat/completions", json={**BODY, "stream": True}) as response:
            response.raise_for_status()
            async for raw in response.content:  # one line at a time
                line = raw.decode()
                choices = json.loads(line[6:])["choices"] if line.startswith("data: {") else []
                if choices and choices[0]["delta"].get("content"):
                    return

    return first_token if stream else whole


async def sample(call: Callable[[], Awaitable[None]], clients: int) -> tuple[list[float], float]:
    """Latencies (ms) of every call, and the calls per second over the whole sample."""

    async def client() -> list[float]:
        out = []
        for _ in range(CALLS[clients]):
            start = time.perf_counter()
            await call()
            out.append((time.perf_counter() - start) * 1000)
        return out

    start = time.perf_counter()
    runs = await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    return [ms for run in runs for ms in run], clients * CALLS[clients] / wall


async def measure(rounds: int) -> dict[str, object]:
    rows: list[list[str]] = []
    figures: dict[str, float] = {}
    with upstream_running() as upstream, litellm_running(upstream, free_port()) as litellm:
        async with (
            shim_running(upstream) as shim,
            shim_running(upstream, in_process=False) as shim_grpc,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        ):
            sides = {"direct": upstream, "shim": shim, "shim_grpc": shim_grpc, "litellm": litellm}
            for clients in (1, 32):
                for stream in (False, True):
                    label = "time to first token" if stream else "whole reply latency"
                    latencies: dict[str, list[float]] = {s: [] for s in sides}
                    rates: dict[str, list[float]] = {s: [] for s in sides}
                    for url in sides.values():
                        await sample(caller(http, url, stream), clients)  # warm up
                    for _ in range(rounds):
                        for side, url in sides.items():
                            ms, rate = await sample(caller(http, url, stream), clients)
                            latencies[side] += ms
                            rates[side].append(rate)
                    p50 = {s: pct(v, 0.5) for s, v in latencies.items()}
                    p95 = {s: pct(v, 0.95) for s, v in latencies.items()}
                    rps = {s: sorted(v)[len(v) // 2] for s, v in rates.items()}
                    added = {s: p50[s] - p50["direct"] for s in ("shim", "shim_grpc", "litellm")}
                    key = f"{'ttft' if stream else 'whole'}_{clients}"
                    figures.update(
                        {
                            f"{key}_shim_added_ms": added["shim"],
                            f"{key}_shim_grpc_added_ms": added["shim_grpc"],
                            f"{key}_litellm_added_ms": added["litellm"],
                            f"{key}_shim_rps": rps["shim"],
                            f"{key}_litellm_rps": rps["litellm"],
                        }
                    )
                    rows.append(
                        [
                            f"{label}, {clients} client{'s' if clients > 1 else ''}: p50 / p95 ms, req/s",
                            f"{p50['direct']:.2f} / {p95['direct']:.2f}, {rps['direct']:.0f}",
                            f"{p50['shim']:.2f} / {p95['shim']:.2f}, {rps['shim']:.0f}",
                            f"{p50['shim_grpc']:.2f} / {p95['shim_grpc']:.2f}, {rps['shim_grpc']:.0f}",
                            f"{p50['litellm']:.2f} / {p95['litellm']:.2f}, {rps['litellm']:.0f}",
                            f"{added['shim']:+.2f} vs {added['litellm']:+.2f} ms; "
                            f"{rps['shim'] / rps['litellm']:.2f}x req/s",
                        ]
                    )
        # The floor: one HTTP hop through a bare uvicorn app that only forwards (whole replies, 1 client).
        with http_floor.floor_running(free_port(), upstream) as floor:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                await sample(caller(http, floor, False), 1)
                direct_ms: list[float] = []
                floor_ms: list[float] = []
                for _ in range(rounds):
                    direct_ms += (await sample(caller(http, upstream, False), 1))[0]
                    floor_ms += (await sample(caller(http, floor, False), 1))[0]
        d50, f50 = pct(direct_ms, 0.5), pct(floor_ms, 0.5)
        figures["floor_whole_1_added_ms"] = f50 - d50
        rows.append(
            [
                "floor: a bare uvicorn app that only forwards, whole reply, 1 client: p50 / p95 ms",
                f"{d50:.2f} / {pct(direct_ms, 0.95):.2f}",
                f"{f50:.2f} / {pct(floor_ms, 0.95):.2f} (the floor)",
                "",
                "",
                f"{f50 - d50:+.2f} ms",
            ]
        )
    checks = [
        (
            "p50 added <= 1 ms at 1 client",
            figures["whole_1_shim_added_ms"] <= 1 and figures["ttft_1_shim_added_ms"] <= 1,
        ),
        (
            "added <= 1/4 of LiteLLM's",
            all(
                figures[f"{k}_shim_added_ms"] <= figures[f"{k}_litellm_added_ms"] / 4
                for k in ("whole_1", "ttft_1")
            ),
        ),
        (
            "requests/s >= 3x LiteLLM's (32 clients)",
            figures["whole_32_shim_rps"] >= 3 * figures["whole_32_litellm_rps"],
        ),
    ]
    return {
        "title": "HTTP shim against the LiteLLM proxy",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"local OpenAI-compatible upstream answering after {DELAY_MS:g} ms; LiteLLM proxy {VERSION} "
            f"(1 worker, no keys, like the shim); {rounds} alternating rounds of {CALLS[1]} calls "
            f"at 1 client and {CALLS[32]} per client at 32"
        ),
        "columns": [
            "direct",
            "shim (+ service, in process)",
            "shim over loopback gRPC",
            "LiteLLM proxy",
            "added p50: shim vs LiteLLM; req/s shim / LiteLLM",
        ],
        "rows": rows,
        "verdict": (
            "Targets: "
            + "; ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in checks)
            + ". One HTTP hop through a bare Python forwarder adds "
            + f"{figures['floor_whole_1_added_ms']:.2f} ms on this machine by itself (the floor row)."
        ),
        "figures": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    publish("shim_vs_litellm", asyncio.run(measure(args.rounds)))


if __name__ == "__main__":
    main()
