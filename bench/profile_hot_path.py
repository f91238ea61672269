"""Where a request's CPU time goes: the service profiled under load, by layer.

`llmservice serve` (gRPC and its HTTP shim, in one process, in front of the fixed-delay
upstream) is sampled by py-spy (the thread holding the GIL, 250 times a second) while one
scenario drives it, once warm: gRPC Chat, gRPC StreamChat, or a shim POST
/v1/chat/completions (one aiohttp session: httpx's pool cannot drive 32 callers without
a tail of its own), at 1 caller and at 32. The process's own CPU time (from /proc, user
+ system) over the calls, divided by the calls, is the CPU cost of one request; the
samples split it between the layers, each sample going to the innermost frame that
belongs to a layer (the libraries a layer calls count as that layer's). A flame graph of
each scenario is written to docs/profiles/. `floor_chat` profiles the bare grpc.aio
forwarder (bench/grpc_floor.py) the same way: the least any Python gRPC gateway spends;
`http_floor_chat` the bare uvicorn forwarder (bench/http_floor.py), the shim's floor.

`python -m bench profile_hot_path` (it needs py-spy: `pip install py-spy`). `--smoke`
runs one short scenario and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from . import flamegraph, grpc_floor, http_floor
from .engine_vs_llama_server import free_port
from .gateway_overhead import MESSAGES, upstream_running
from .report import ROOT, publish
from .serve_process import llmservice_serve, pct

PROFILES = ROOT / "docs" / "profiles"
RATE = 250  # samples a second
CALLS = {1: 600, 32: 60}  # per caller

# (what a frame's file path contains, the layer it belongs to): the first rule a frame
# matches decides its layer; a sample belongs to its innermost frame that has one.
LAYERS: list[tuple[str, str]] = [
    ("/logging/", "logging"),
    ("llmservice/observability/logs", "logging"),
    ("opentelemetry", "tracing"),
    ("llmservice/observability/tracing", "tracing"),
    ("prometheus_client", "metrics"),
    ("llmservice/observability/metrics", "metrics"),
    ("llmservice/grpc_api/call_metrics", "metrics"),
    ("llmservice/rest/", "shim (HTTP parse, serialise, gate)"),
    ("uvicorn", "shim server (uvicorn, h11)"),
    ("h11", "shim server (uvicorn, h11)"),
    ("starlette", "shim server (uvicorn, h11)"),
    ("fastapi", "shim (HTTP parse, serialise, gate)"),
    ("llmservice/grpc_api/in_process", "in-process channel (shim to service)"),
    ("llmservice/grpc_api/codec", "gRPC codec (protobuf to domain and back)"),
    ("llmservice/grpc_api/request_context", "call context (request id, payload log, span)"),
    ("llmservice/grpc_api/", "gRPC servicer"),
    ("llmservice/service/auth", "auth"),
    ("llmservice/service/limits", "limits and usage"),
    ("llmservice/service/validation", "validation"),
    ("llmservice/service/", "core and routing"),
    ("llmservice/kernel/scheduler", "scheduler"),
    ("llmservice/providers/", "provider call (HTTP client, upstream JSON)"),
    ("aiohttp", "provider call (HTTP client, upstream JSON)"),
    ("httpx", "provider call (HTTP client, upstream JSON)"),
    ("grpc/", "grpc.aio (C-core glue)"),
    ("asyncio/", "event loop, grpc.aio's native code"),
    ("uvloop", "event loop, grpc.aio's native code"),
    ("bench/grpc_floor", "the floor's own code"),
    ("bench/http_floor", "the floor's own code"),
]
OTHER = "other"
KEEP_RAW = bool(os.environ.get("PROFILE_KEEP_RAW"))  # leave the collapsed stacks beside the SVG


@dataclass
class Scenario:
    name: str
    surface: str  # grpc_chat, grpc_stream, shim_chat
    callers: int


SCENARIOS = [
    Scenario(f"{surface}_{callers}", surface, callers)
    for surface in ("grpc_chat", "floor_chat", "grpc_stream", "shim_chat", "http_floor_chat")
    for callers in (1, 32)
]


def layer_of(frame: str) -> str | None:
    """`frame` is py-spy's "function (path:line)"."""
    path = frame.rsplit("(", 1)[-1]
    for needle, layer in LAYERS:
        if needle in path:
            return layer
    return None


def by_layer(collapsed: dict[str, int]) -> Counter[str]:
    """Samples per layer, from py-spy's collapsed stacks (root first, ';'-separated)."""
    layers: Counter[str] = Counter()
    for stack, n in collapsed.items():
        frames = stack.split(";")
        found = next((layer for f in reversed(frames) if (layer := layer_of(f))), OTHER)
        layers[found] += n
    return layers


def read_collapsed(path: Path) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks[stack] = stacks.get(stack, 0) + int(n)
    return stacks


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.asynccontextmanager
async def sampling(pid: int, raw: Path) -> AsyncIterator[None]:
    """py-spy sampling process `pid` (the thread holding the GIL) for the block, without
    pausing it (--nonblocking: the latencies are not stretched by the sampling)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate", str(RATE)]
    argv += ["--format", "raw", "-o", str(raw)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await asyncio.sleep(0.5)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # it writes its samples as it stops
        await proc.wait()


async def drive(call: Callable[[], Awaitable[None]], callers: int) -> list[float]:
    async def caller() -> list[float]:
        times = []
        for _ in range(CALLS[callers]):
            start = time.perf_counter()
            await call()
            times.append((time.perf_counter() - start) * 1000)
        return times

    runs = await asyncio.gather(*(caller() for _ in range(callers)))
    return [t for run in runs for t in run]


async def profile(scenario: Scenario, upstream: str) -> dict[str, object]:
    raw = PROFILES / f"{scenario.name}.txt"
    PROFILES.mkdir(parents=True, exist_ok=True)
    request = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content=MESSAGES[0]["content"])])
    body = {"model": "fixed", "messages": MESSAGES}
    settings = (
        "provider=openai_compatible",
        f"openai_compatible.base_url={upstream}",
        "openai_compatible.model=fixed",
    )
    with http_floor.floor_process(free_port(), upstream) as (http_floor_url, http_floor_pid):
        async with (
            llmservice_serve(*settings, http=True) as served,
            grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
            grpc_floor.floor_process(free_port(), upstream) as (floor, floor_pid),
        ):
            stub = pb_grpc.LLMServiceStub(channel)

            async def grpc_chat() -> None:
                await stub.Chat(request)

            async def floor_chat() -> None:
                await floor.Chat(request)

            async def grpc_stream() -> None:
                async for _ in stub.StreamChat(request):
                    pass

            def http_post(url: str) -> Callable[[], Awaitable[None]]:
                async def post() -> None:
                    async with http.post(f"{url}/chat/completions", json=body) as response:
                        response.raise_for_status()
                        await response.read()

                return post

            surfaces = {"grpc_chat": grpc_chat, "floor_chat": floor_chat, "grpc_stream": grpc_stream}
            shim = {
                "shim_chat": http_post(f"{served.http_url}/v1"),
                "http_floor_chat": http_post(http_floor_url),
            }
            call = {**surfaces, **shim}[scenario.surface]
            pids = {"floor_chat": floor_pid, "http_floor_chat": http_floor_pid}
            pid = pids.get(scenario.surface, served.pid)
            await drive(call, scenario.callers)  # warm: connections, caches, first-call imports
            async with sampling(pid, raw):
                before = cpu_seconds(pid)
                started = time.perf_counter()
                latencies = await drive(call, scenario.callers)
                wall = time.perf_counter() - started
                cpu = cpu_seconds(pid) - before
    samples = by_layer(read_collapsed(raw))
    flamegraph.write(read_collapsed(raw), PROFILES / f"{scenario.name}.svg", title=scenario.name)
    if not KEEP_RAW:
        raw.unlink()
    calls = len(latencies)
    return {
        "scenario": scenario.name,
        "calls": calls,
        "cpu_ms_per_call": cpu * 1000 / calls,
        "calls_per_s": calls / wall,
        "p50_ms": pct(latencies, 0.5),
        "p95_ms": pct(latencies, 0.95),
        "p99_ms": pct(latencies, 0.99),
        "layers": {layer: n / sum(samples.values()) for layer, n in samples.most_common()},
    }


async def measure(scenarios: list[Scenario]) -> dict[str, object]:
    results = []
    with upstream_running() as upstream:
        for scenario in scenarios:
            results.append(await profile(scenario, upstream))
    layers = sorted({layer for r in results for layer in r["layers"]})  # type: ignore[attr-defined]
    rows = [
        ["CPU ms per request (the service process)", *(f"{r['cpu_ms_per_call']:.2f}" for r in results)],
        ["requests/s; p50 / p95 / p99 ms", *(_latency(r) for r in results)],
    ]
    order = sorted(layers, key=lambda layer: -max(r["layers"].get(layer, 0) for r in results))  # type: ignore[attr-defined]
    for layer in order:
        rows.append([f"{layer}, CPU ms (share)", *(_share(r, layer) for r in results)])
    return {
        "title": "Where a request's CPU time goes (profile by layer)",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"py-spy at {RATE} Hz on `llmservice serve` (gRPC and its shim in one process) in front of "
            f"a local upstream answering after 20 ms; {CALLS[1]} calls at 1 caller, {CALLS[32]} per "
            "caller at 32; flame graphs in docs/profiles/"
        ),
        "columns": [r["scenario"] for r in results],
        "rows": rows,
        "verdict": _verdict({str(r["scenario"]): r for r in results}),
        "notes": (
            "A sample goes to the innermost frame of a layer, so a layer's figure includes the "
            "libraries it calls (the shim's pydantic and JSON, the provider's aiohttp); `grpc.aio` "
            "and `event loop` are the frames with no layer of ours beneath them. The scenarios run "
            "one after another with py-spy attached, so their requests/s are not for comparing; "
            "the hot path's table compares throughput in alternating rounds. At 1 caller every "
            "process sleeps through the upstream's 20 ms between requests and each request starts "
            "on cold caches: the code the service shares with the floors (uvicorn, the HTTP client) "
            "then costs it more CPU than the same code costs a floor, whose process runs less."
        ),
        "figures": {r["scenario"]: {k: v for k, v in r.items() if k != "scenario"} for r in results},
    }


def _verdict(by: dict[str, dict[str, object]]) -> str:
    """CPU per request against each floor, and each 32-caller tail, for the scenarios that ran.
    Throughput against the floors is bench/hot_path's (alternating rounds, no profiler)."""
    said = []
    pairs = [
        ("grpc_chat", "floor_chat", "the bare grpc.aio forwarder"),
        ("shim_chat", "http_floor_chat", "the bare uvicorn forwarder"),
    ]
    for ours_name, floor_name, floor_is in pairs:
        for callers in (1, 32):
            ours, floor = by.get(f"{ours_name}_{callers}"), by.get(f"{floor_name}_{callers}")
            if ours and floor:
                ours_ms, floor_ms = float(ours["cpu_ms_per_call"]), float(floor["cpu_ms_per_call"])  # type: ignore[arg-type]
                said.append(
                    f"{ours_name} at {callers} caller{'s' if callers > 1 else ''} spends {ours_ms:.2f} ms of "
                    f"CPU per request where {floor_is} spends {floor_ms:.2f} ({ours_ms / floor_ms:.2f}x)"
                )
    for name, r in by.items():
        if name.endswith("_32"):
            tail = float(r["p95_ms"]) / float(r["p50_ms"])  # type: ignore[arg-type]
            said.append(f"{name} p95 / p50 {tail:.2f}")
    return "; ".join(said) + "." if said else ""


def _latency(r: dict[str, object]) -> str:
    return f"{r['calls_per_s']:.0f}; {r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f}"


def _share(r: dict[str, object], layer: str) -> str:
    share = r["layers"].get(layer, 0.0)  # type: ignore[attr-defined]
    return f"{share * float(r['cpu_ms_per_call']):.3f} ({share:.0%})"  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one short scenario; print, do not publish")
    parser.add_argument("--only", nargs="*", default=[], help="scenarios by name (e.g. grpc_chat_32)")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.smoke:
        CALLS.update({1: 50, 32: 5})
        result = asyncio.run(measure(chosen[:1]))
        for row in result["rows"]:  # type: ignore[attr-defined]
            print(" | ".join(row))
        return
    publish("profile_hot_path", asyncio.run(measure(chosen)))


if __name__ == "__main__":
    main()
