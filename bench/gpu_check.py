"""The local engine on whatever llama.cpp build is installed: where the model runs, decode
throughput at several streams, whether a seeded reply is the same alone and beside others,
and how long an interactive request waits for its first token under background load.

Made for the GPU check (a CUDA build on a machine with an NVIDIA GPU and a random-weight
model from bench/random_gguf, since the bundled model does not travel), it runs anywhere:

  python -m bench.gpu_check --make 2048x16 --out DIR      # a ~0.5 B model made on the spot
  python -m bench.gpu_check --model m.gguf --out DIR
  python -m bench.gpu_check --publish DIR/gpu_check.json  # into bench/results and docs/benchmarks.md

It drives the provider in process (no gRPC): the engine's own figures. The random model's
replies are noise; its sampling uses temperature 0.8 so that streams do not all agree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from llmservice.kernel.types import ChatRequest, Message, Sampling, TokenDelta
from llmservice.providers.llamacpp.offload import devices
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.llamacpp.settings import LlamaCppSettings

from .random_gguf import Shape, write
from .report import machine, publish, write_result
from .serve_process import pct

MODEL_ID = "check"


def ask(text: str, tokens: int, seed: int, priority: int = 0) -> ChatRequest:
    sampling = Sampling(max_tokens=tokens, temperature=0.8, seed=seed)
    return ChatRequest((Message("user", text),), sampling=sampling, priority=priority)


async def reply(p: LlamaCppProvider, request: ChatRequest) -> tuple[list[str], float]:
    """The reply's tokens and the time to its first, in ms."""
    start, first = time.perf_counter(), 0.0
    tokens: list[str] = []
    async for event in p.stream(MODEL_ID, request):
        if isinstance(event, TokenDelta):
            first = first or (time.perf_counter() - start) * 1000
            tokens.append(event.text)
    return tokens, first


async def throughput(p: LlamaCppProvider, streams: int, tokens: int) -> float:
    """Tokens per second over `streams` replies decoded together."""
    start = time.perf_counter()
    replies = await asyncio.gather(
        *(reply(p, ask(f"Tell me story number {i}.", tokens, seed=100 + i)) for i in range(streams))
    )
    return sum(len(t) for t, _ in replies) / (time.perf_counter() - start)


async def invariance(p: LlamaCppProvider, tokens: int) -> bool:
    """Whether a seeded request decodes to the same tokens alone and beside three others."""
    probe = ask("Describe the sea.", tokens, seed=11)
    alone, _ = await reply(p, probe)
    others = [reply(p, ask(f"Something else, {i}.", tokens, seed=200 + i)) for i in range(3)]
    beside, *_ = await asyncio.gather(reply(p, probe), *others)
    return alone == beside[0]


async def interactive_ttft(p: LlamaCppProvider, samples: int, background: int) -> list[float]:
    """First-token times (ms) of short priority-0 requests, one after another, while
    `background` long priority-10 streams run (0: idle)."""
    running = [
        asyncio.create_task(reply(p, ask(f"Write at length, {i}.", 100_000, seed=300 + i, priority=10)))
        for i in range(background)
    ]
    try:
        await asyncio.sleep(0.5 if background else 0)
        return [(await reply(p, ask("Hi", 4, seed=i)))[1] for i in range(samples)]
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def batched_bench(text: str) -> dict[int, float]:
    """llama-batched-bench's decode rate (S_TG t/s, all streams together) by streams (B)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()]
    header = next((r for r in rows if "S_TG t/s" in r), None)
    if header is None:
        return {}
    b, rate = header.index("B"), header.index("S_TG t/s")
    found = {}
    for row in rows:
        if len(row) == len(header) and row[b].isdigit():
            found[int(row[b])] = float(row[rate])
    return found


async def measure(
    model: Path, streams: list[int], tokens: int, samples: int, reference: dict[int, float] | None = None
) -> dict[str, Any]:
    size_mb = model.stat().st_size / 1e6  # noqa: ASYNC240 (once, before anything runs)
    with tempfile.TemporaryDirectory() as cache:
        settings = LlamaCppSettings(
            model_path=model,
            model_id=MODEL_ID,
            n_ctx=1024,
            n_slots=max(streams),
            cached_sequences=max(streams),
            cache_dir=Path(cache),
            prompt_cache="off",  # every request computes its prompt: the decode figures stay apart
        )
        async with LlamaCppProvider(settings) as p:
            [info] = await p.list_models()
            await throughput(p, 1, 8)  # warm
            rates = {k: await throughput(p, k, tokens) for k in streams}
            same = await invariance(p, min(tokens, 32))
            idle = await interactive_ttft(p, samples, 0)
            loaded = await interactive_ttft(p, samples, 4)
    gpus = [f"{d.name} ({d.description})" for d in devices() if d.gpu]
    idle_p50 = statistics.median(idle)
    reference = reference or {}
    rows = []
    for k, rate in rates.items():
        theirs = reference.get(k)
        against = f"; llama-batched-bench {theirs:.0f} ({rate / theirs:.2f}x)" if theirs else ""
        rows.append([f"decode tokens/s, {k} stream{'s' if k > 1 else ''}", f"{rate:.0f}{against}"])
    rows += [
        ["a seeded reply alone and beside three others", "the same" if same else "DIFFERENT"],
        ["interactive time to first token, idle, p50 ms", f"{idle_p50:.1f}"],
    ]
    for q in (0.5, 0.95, 0.99):
        under = pct(loaded, q)
        rows.append(
            [f"... under 4 background streams, p{int(q * 100)} / idle p50", f"{under / idle_p50:.2f}x"]
        )
    where = f"{info.gpu_layers}/{info.layers} layers on {info.device}"
    return {
        "title": "The local engine on this build's device (the GPU check)",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"model {model.name} ({size_mb:.0f} MB), {where}; GPUs: {', '.join(gpus) or 'none'}; "
            f"{tokens} tokens per stream; {samples} interactive samples idle and under load"
        ),
        "columns": ["measured"],
        "rows": rows,
        "verdict": (
            f"Runs {where}. A seeded reply is {'the same' if same else 'NOT the same'} alone and "
            "beside others on this device."
        ),
        "figures": {
            "device": info.device,
            "gpu_layers": info.gpu_layers,
            "layers": info.layers,
            "gpus": gpus,
            "tokens_per_s": rates,
            "batched_bench_tokens_per_s": reference,
            "batch_invariant_observed": same,
            "idle_ttft_ms": idle,
            "loaded_ttft_ms": loaded,
            "machine": machine(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a GGUF to run")
    parser.add_argument("--make", default="", help="HIDDENxLAYERS: make a random model of that shape")
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--reference", type=Path, help="llama-batched-bench's output on the same model")
    parser.add_argument("--out", type=Path, help="a folder for gpu_check.json (else bench/results)")
    parser.add_argument("--publish", type=Path, help="a gpu_check.json from another machine: publish it")
    args = parser.parse_args()
    if args.publish:
        result = json.loads(args.publish.read_text())
        publish("gpu_check", {k: v for k, v in result.items() if k not in ("name", "date", "machine")})
        return
    model = args.model
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.make:
        hidden, layers = (int(n) for n in args.make.lower().split("x"))
        model = (args.out or Path(tempfile.gettempdir())) / f"random-{hidden}x{layers}.gguf"
        made = write(model, Shape.sized(hidden, layers))
        print(f"made {model}: {made / 1e6:.0f} M parameters", flush=True)
    if model is None:
        parser.error("give --model or --make")
    reference = batched_bench(args.reference.read_text()) if args.reference else None
    streams = [int(n) for n in args.streams.split(",")]
    result = asyncio.run(measure(model, streams, args.tokens, args.samples, reference))
    if args.out:
        (args.out / "gpu_check.json").write_text(json.dumps({"name": "gpu_check", **result}, indent=2) + "\n")
        if args.make:
            model.unlink()  # too large to come back
    else:
        print(write_result("gpu_check", result))
    for row in result["rows"]:
        print(" | ".join(row))
    print(result["verdict"])


if __name__ == "__main__":
    main()
