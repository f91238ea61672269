"""What one hop costs: StreamChat through a gateway llmservice whose provider is `grpc`
(forwarding to a second llmservice on the bundled model) against calling the second
directly: decode tokens/s and time to first token.

Both services run in processes of their own, as deployed (a CPU gateway in front of a
replica). The two sides alternate, round by round, on the same greedy request, so they
generate the same tokens. On one machine the gateway's forwarding shares the cores with
the replica's decode threads, which a real deployment (gateway and replica apart) does
not; the hop's own cost per token is what the ratio shows. `--smoke` runs a few calls and
prints instead of publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from .report import publish
from .serve_process import llmservice_serve, pct

DECODE = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="user", content="Tell a long story about the sea.")],
    max_tokens=150,
    temperature=0.0,
    seed=1,
)
FIRST = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="user", content="Say hello.")], max_tokens=1, temperature=0.0
)
TARGET_RATIO, TARGET_ADDED_MS = 0.97, 1.0


async def decode_rate(stub: pb_grpc.LLMServiceStub) -> tuple[float, int]:
    """Tokens per second after the first token, and how many came."""
    first = last = 0.0
    tokens = 0
    async for chunk in stub.StreamChat(DECODE):
        if chunk.token:
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return (tokens - 1) / (last - first), tokens


async def first_token_ms(stub: pb_grpc.LLMServiceStub) -> float:
    started = time.perf_counter()
    async for chunk in stub.StreamChat(FIRST):
        if chunk.token:
            return (time.perf_counter() - started) * 1000
    raise RuntimeError("no token came")


async def measure(rounds: int, first_tokens: int) -> dict[str, object]:
    async with llmservice_serve() as replica:
        target = f"127.0.0.1:{replica.grpc_port}"
        async with (
            llmservice_serve("provider=grpc", f"grpc.target={target}") as gateway,
            grpc.aio.insecure_channel(target) as direct_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as hop_channel,
        ):
            direct, hop = pb_grpc.LLMServiceStub(direct_channel), pb_grpc.LLMServiceStub(hop_channel)
            for stub in (direct, hop):  # warm: connections, the prompt cache
                await decode_rate(stub)
                await first_token_ms(stub)
            rates: dict[str, list[float]] = {"direct": [], "hop": []}
            counts: set[int] = set()
            for _ in range(rounds):
                for name, stub in (("direct", direct), ("hop", hop)):
                    rate, tokens = await decode_rate(stub)
                    rates[name].append(rate)
                    counts.add(tokens)
            ttft: dict[str, list[float]] = {"direct": [], "hop": []}
            for _ in range(first_tokens):
                for name, stub in (("direct", direct), ("hop", hop)):
                    ttft[name].append(await first_token_ms(stub))
    ratios = [h / d for d, h in zip(rates["direct"], rates["hop"], strict=True)]
    ratio = statistics.median(ratios)
    added = statistics.median(ttft["hop"]) - statistics.median(ttft["direct"])

    def quantiles(values: list[float]) -> list[str]:
        return [f"{pct(values, q):.2f}" for q in (0.5, 0.95, 0.99)]

    rows = [
        [
            "decode tokens/s, median",
            f"{statistics.median(rates['direct']):.1f}",
            f"{statistics.median(rates['hop']):.1f}",
            f"{ratio:.3f}",
        ],
        *(
            [f"time to first token p{p}, ms", d, h, f"{float(h) - float(d):+.2f} ms"]
            for p, d, h in zip((50, 95, 99), quantiles(ttft["direct"]), quantiles(ttft["hop"]), strict=True)
        ),
    ]
    verdict = (
        f"Through one hop: {ratio:.3f} of the direct decode rate (target at least {TARGET_RATIO}), "
        f"{added:+.2f} ms time to first token at p50 (target at most +{TARGET_ADDED_MS:g} ms): "
        + (
            "both met."
            if ratio >= TARGET_RATIO and added <= TARGET_ADDED_MS
            else "not met on this machine; see the notes."
        )
    )
    return {
        "title": "One gRPC hop: a gateway llmservice forwarding to a replica",
        "description": (
            "StreamChat through a gateway whose provider is `grpc` (forwarding to a second "
            "llmservice) against calling the second directly."
        ),
        "setup": (
            f"bundled SmolLM2 135M on the replica, greedy, {sorted(counts)} tokens per decode, "
            f"{rounds} alternating decode rounds, {first_tokens} first-token samples per side, "
            "gateway and replica in processes of their own on the same cores"
        ),
        "columns": ["direct to the replica", "through the gateway", "hop / direct"],
        "rows": rows,
        "verdict": verdict,
        "notes": (
            "On one machine the gateway's work per token (decode the chunk, re-encode it, send it) "
            "runs on the cores the replica decodes on; where the gateway runs apart, only the "
            "network's round trip is added."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--first-tokens", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few calls; print, do not publish")
    args = parser.parse_args()
    if args.smoke:
        print(asyncio.run(measure(1, 5))["rows"])
        return
    publish("grpc_hop", asyncio.run(measure(args.rounds, args.first_tokens)))


if __name__ == "__main__":
    main()
