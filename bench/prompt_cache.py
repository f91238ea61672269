"""Prompt caching against llama-server: time to first token over a conversation, on repeats, on fresh prompts.

The service (`llmservice serve`, bundled model) runs in a process of its own, once with
`llamacpp.prompt_cache=exact` and once with `off`, never both at once; llama-server
(bench/llama_server.py) runs beside the exact one with `cache_prompt` on, with the same
model, threads, slots, context and batch size. Only one side computes at a time.

A conversation is a system prompt and user turns of about 120 tokens, greedy, each reply
(at most 32 tokens) sent back as the assistant message of the next turn, as a chat
client does; before each turn the client "thinks" for a second (a user reads and types),
the same on both sides: the engine uses that idle time to prefill the conversation as
its next turn will resend it. Each round is a fresh conversation: a new cache_salt for
the service, a new system prompt (and so a new prefix) for llama-server. An exact repeat
is the same request sent again after a think pause. Prompts that share nothing each come
with a fresh cache_salt, and measure what the cache costs when it cannot help: exact
against off, in alternating blocks of processes.

`--smoke` runs a tiny version and prints the section instead of publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass

import grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.providers.llamacpp.model import LlamaModel
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_NAME, bundled_model_path
from llmservice.providers.llamacpp.settings import LlamaCppSettings

from .engine_vs_llama_server import N_CTX, SLOTS, llama_server_running
from .report import machine, publish, render_section
from .serve_process import llmservice_serve, pct

N_BATCH = 256  # the engine's default, and the -b/-ub that llama_server_running passes
TURN_TOKENS = 120
REPLY_TOKENS = 32
PROBE_TOKENS = 8  # replies to the repeat and no-sharing probes: only their first token is timed
FRESH_TOKENS = 200
REPORTED_TURNS = (1, 2, 4, 8, 16)
TURN_RATIO_TARGET = 1.5
REPEAT_RATIO_TARGET = 1.2
OVERHEAD_TARGET = 1.02
WORDS = (  # noqa: SIM905
    "river mountain lantern copper garden window harbor meadow engine signal ladder orchard "
    "thunder pencil marble violet castle compass winter summer market bridge candle forest "
    "silver basket rocket island jacket puzzle canyon velvet anchor planet timber saddle "
    "falcon harvest glacier mirror tunnel blanket orange shadow feather ribbon station "
    "kettle meadowlark granite cobalt whistle lighthouse blossom quarry ember pepper "
    "valley cinder tavern beacon spindle hollow crimson"
).split()

Messages = list[dict[str, str]]


@dataclass
class Reply:
    ttft_s: float  # request sent to the first chunk with text (to the end if none came)
    text: str
    prompt_tokens: int
    cached_tokens: int  # of prompt_tokens, those served from the prompt cache


# One side's request: messages, max tokens, cache salt (the service's; llama-server ignores it).
Ask = Callable[[Messages, int, str], Awaitable[Reply]]


def text_of(model: LlamaModel, seed: str, head: str, tail: str, tokens: int) -> str:
    """`head`, words drawn by `seed`, then `tail`: about `tokens` tokens in all."""
    rng = random.Random(seed)
    words: list[str] = []
    while True:
        text = " ".join([head, *words, tail])
        if len(model.tokenize(text, add_special=False, parse_special=False)) >= tokens:
            return text
        words.append(rng.choice(WORDS))


def our_side(stub: pb_grpc.LLMServiceStub) -> Ask:
    async def ask(messages: Messages, n: int, salt: str) -> Reply:
        request = pb.LLMChatRequest(
            messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            max_tokens=n,
            temperature=0.0,
            cache_salt=salt,
        )
        start = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        async for chunk in stub.StreamChat(request):
            if chunk.done:
                return Reply(
                    ttft if parts else time.perf_counter() - start,
                    "".join(parts),
                    chunk.prompt_tokens,
                    chunk.cached_prompt_tokens,
                )
            if chunk.token:
                if not parts:
                    ttft = time.perf_counter() - start
                parts.append(chunk.token)
        raise RuntimeError("StreamChat ended without its final chunk")

    return ask


def server_reply(port: int, messages: Messages, n: int) -> Reply:
    """One greedy streamed /v1/chat/completions from llama-server, prompt cache on."""
    body = json.dumps(
        {
            "messages": messages,
            "max_tokens": n,
            "stream": True,
            "temperature": 0.0,
            "top_k": 1,
            "cache_prompt": True,
        }
    )
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"llama-server answered {response.status}: {response.read()[:500]!r}")
    ttft = 0.0
    parts: list[str] = []
    timings: dict[str, float] = {}
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        if line[6:] == b"[DONE]":
            break
        event = json.loads(line[6:])
        timings = event.get("timings", timings)
        for choice in event.get("choices", ()):
            if text := (choice.get("delta") or {}).get("content") or "":
                if not parts:
                    ttft = time.perf_counter() - start
                parts.append(text)
    end = time.perf_counter()
    conn.close()
    cached = int(timings.get("cache_n", 0))
    return Reply(
        ttft if parts else end - start, "".join(parts), cached + int(timings.get("prompt_n", 0)), cached
    )


def server_side(port: int) -> Ask:
    async def ask(messages: Messages, n: int, salt: str) -> Reply:
        return await asyncio.to_thread(server_reply, port, messages, n)

    return ask


@contextlib.asynccontextmanager
async def service_running(threads: int, mode: str) -> AsyncIterator[Ask]:
    """`llmservice serve` with `llamacpp.prompt_cache=mode`, warmed up by one request."""
    settings = (
        f"llamacpp.n_ctx={N_CTX}",
        f"llamacpp.n_batch={N_BATCH}",
        f"llamacpp.n_threads={threads}",
        f"llamacpp.n_slots={SLOTS}",
        f"llamacpp.prompt_cache={mode}",
    )
    async with (
        llmservice_serve(*settings) as served,
        grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel,
    ):
        ask = our_side(pb_grpc.LLMServiceStub(channel))
        await warm_up(ask)
        yield ask


async def warm_up(ask: Ask) -> None:
    await ask([{"role": "user", "content": "Say hi."}], 4, salt())
    await ask([{"role": "user", "content": "Say hello."}], 4, salt())


def salt() -> str:
    return uuid.uuid4().hex


async def conversation(ask: Ask, system: str, users: list[str], think_s: float) -> list[Reply]:
    """The conversation turn by turn, each reply sent back as the next turn's assistant message."""
    messages: Messages = [{"role": "system", "content": system}]
    partition = salt()
    replies = []
    for user in users:
        await asyncio.sleep(think_s)
        messages.append({"role": "user", "content": user})
        reply = await ask(messages, REPLY_TOKENS, partition)
        messages.append({"role": "assistant", "content": reply.text})
        replies.append(reply)
    return replies


async def repeat(ask: Ask, messages: Messages, think_s: float) -> tuple[Reply, Reply]:
    """The same request twice, a think pause before each: (first, repeat)."""
    partition = salt()
    await asyncio.sleep(think_s)
    first = await ask(messages, PROBE_TOKENS, partition)
    await asyncio.sleep(think_s)
    return first, await ask(messages, PROBE_TOKENS, partition)


async def fresh(ask: Ask, prompts: list[Messages], think_s: float) -> list[Reply]:
    """Prompts that share nothing, each with a salt of its own, a think pause before each."""
    replies = []
    for messages in prompts:
        await asyncio.sleep(think_s)
        replies.append(await ask(messages, PROBE_TOKENS, salt()))
    return replies


async def measure(
    rounds: int, turns: int, repeats: int, fresh_samples: int, blocks: int, think_s: float, threads: int
) -> dict[str, object]:
    model_path = bundled_model_path(LlamaCppSettings().cache_dir)
    model = LlamaModel(model_path)
    conversations = [
        (
            f"Conversation {r + 1}. You are a helpful assistant. Answer briefly.",
            [
                text_of(
                    model,
                    f"turn-{r}-{t}",
                    f"Part {t + 1} of my notes:",
                    "What is the main point of this part?",
                    TURN_TOKENS,
                )
                for t in range(turns)
            ],
        )
        for r in range(rounds)
    ]
    repeated = [
        [{"role": "user", "content": text_of(model, f"repeat-{i}", f"Note {i}:", "Summarise.", FRESH_TOKENS)}]
        for i in range(repeats)
    ]
    fresh_prompts = [
        [{"role": "user", "content": text_of(model, f"fresh-{i}", f"Memo {i}:", "Summarise.", FRESH_TOKENS)}]
        for i in range(fresh_samples)
    ]
    model.close()
    blocks = max(1, min(blocks, fresh_samples))
    per_block = [fresh_prompts[b::blocks] for b in range(blocks)]

    conv: dict[str, list[list[Reply]]] = {"llama_server": [], "exact": [], "off": []}
    reps: dict[str, list[tuple[Reply, Reply]]] = {"llama_server": [], "exact": []}
    fresh_runs: dict[str, list[Reply]] = {"exact": [], "off": []}
    start = time.monotonic()
    with llama_server_running(str(model_path), threads, SLOTS) as port:
        server = server_side(port)
        await warm_up(server)
        async with service_running(threads, "exact") as exact:
            for r, (system, users) in enumerate(conversations):
                sides = [("exact", exact), ("llama_server", server)]
                for name, ask in sides if r % 2 == 0 else sides[::-1]:
                    conv[name].append(await conversation(ask, system, users, think_s))
            for i, messages in enumerate(repeated):
                sides = [("exact", exact), ("llama_server", server)]
                for name, ask in sides if i % 2 == 0 else sides[::-1]:
                    reps[name].append(await repeat(ask, messages, think_s))
            fresh_runs["exact"] += await fresh(exact, per_block[0], think_s)
    async with service_running(threads, "off") as off:
        for system, users in conversations:
            conv["off"].append(await conversation(off, system, users, think_s))
        fresh_runs["off"] += await fresh(off, per_block[0], think_s)
    for block in per_block[1:]:
        for mode in ("exact", "off"):
            async with service_running(threads, mode) as ask:
                fresh_runs[mode] += await fresh(ask, block, think_s)
    elapsed = time.monotonic() - start
    return summarise(conv, reps, fresh_runs, rounds, turns, blocks, think_s, threads, elapsed)


def ms(values: list[float]) -> str:
    return " / ".join(f"{v * 1000:.0f}" for v in values)


def spread(values: list[float]) -> list[float]:
    """p50, p95, p99 (nearest rank: below 100 samples p99 is the maximum)."""
    return [pct(values, q) for q in (0.5, 0.95, 0.99)]


def summarise(
    conv: dict[str, list[list[Reply]]],
    reps: dict[str, list[tuple[Reply, Reply]]],
    fresh_runs: dict[str, list[Reply]],
    rounds: int,
    turns: int,
    blocks: int,
    think_s: float,
    threads: int,
    elapsed_s: float,
) -> dict[str, object]:
    sides = ("llama_server", "exact", "off")
    shown = [t for t in REPORTED_TURNS if t < turns] + [turns]
    last = turns

    def at(side: str, turn: int) -> list[Reply]:
        return [run[turn - 1] for run in conv[side]]

    def ttft(side: str, turn: int) -> float:
        return statistics.median(r.ttft_s for r in at(side, turn))

    rows: list[list[str]] = []
    for t in shown:
        cells = []
        for side in sides:
            replies = at(side, t)
            cached = statistics.median(r.cached_tokens for r in replies)
            prompt = statistics.median(r.prompt_tokens for r in replies)
            cells.append(
                f"{ttft(side, t) * 1000:.0f} / {max(r.ttft_s for r in replies) * 1000:.0f} "
                f"({cached:.0f} of {prompt:.0f})"
            )
        note = f"exact / llama-server {ttft('exact', t) / ttft('llama_server', t):.2f}x"
        if t == last:
            note += " (target <= 1.00x)"
        rows.append(
            [
                f"turn {t}: TTFT ms, median / max of {rounds} rounds (prompt tokens cached of all)",
                *cells,
                note,
            ]
        )
    growth = {side: ttft(side, last) / ttft(side, 1) for side in sides}
    rows.append(
        [
            f"turn {last} TTFT / turn 1 TTFT (medians)",
            *(f"{growth[s]:.2f}x" for s in sides),
            f"target <= {TURN_RATIO_TARGET}x (exact)",
        ]
    )
    first = {side: [a.ttft_s for a, _ in reps[side]] for side in reps}
    again = {side: [b.ttft_s for _, b in reps[side]] for side in reps}
    repeat_ratio = statistics.median(again["exact"]) / statistics.median(again["llama_server"])
    rows.append(
        [
            f"~{FRESH_TOKENS}-token prompt, first send: TTFT ms p50 / p95 / p99 of {len(first['exact'])}",
            ms(spread(first["llama_server"])),
            ms(spread(first["exact"])),
            "",
            "",
        ]
    )
    rows.append(
        [
            f"same, sent again (exact repeat): TTFT ms p50 / p95 / p99 of {len(again['exact'])}",
            ms(spread(again["llama_server"])),
            ms(spread(again["exact"])),
            "",
            f"exact / llama-server p50 {repeat_ratio:.2f}x (target <= {REPEAT_RATIO_TARGET}x)",
        ]
    )
    fresh_ttft = {mode: [r.ttft_s for r in fresh_runs[mode]] for mode in fresh_runs}
    overhead = statistics.median(fresh_ttft["exact"]) / statistics.median(fresh_ttft["off"])
    rows.append(
        [
            f"~{FRESH_TOKENS}-token prompts sharing nothing: TTFT ms p50 / p95 / p99 of "
            f"{len(fresh_ttft['exact'])}",
            "",
            ms(spread(fresh_ttft["exact"])),
            ms(spread(fresh_ttft["off"])),
            f"exact / off p50 {overhead:.3f} (target <= {OVERHEAD_TARGET})",
        ]
    )
    figures: dict[str, object] = {
        "ttft_ms": {side: {str(t): ttft(side, t) * 1000 for t in shown} for side in sides},
        "last_turn": last,
        "turn_growth": growth,
        "repeat_p50_ms": {side: statistics.median(again[side]) * 1000 for side in again},
        "repeat_ratio": repeat_ratio,
        "fresh_p50_ms": {mode: statistics.median(fresh_ttft[mode]) * 1000 for mode in fresh_ttft},
        "overhead_ratio": overhead,
        "fresh_cached_tokens_max": max(r.cached_tokens for r in fresh_runs["exact"]),
        "elapsed_s": elapsed_s,
    }
    checks = [
        (f"exact turn {last} TTFT <= {TURN_RATIO_TARGET}x turn 1", growth["exact"] <= TURN_RATIO_TARGET),
        (f"exact turn {last} TTFT <= llama-server's", ttft("exact", last) <= ttft("llama_server", last)),
        (f"exact repeat <= {REPEAT_RATIO_TARGET}x llama-server's", repeat_ratio <= REPEAT_RATIO_TARGET),
        (
            f"overhead on prompts sharing nothing <= {(OVERHEAD_TARGET - 1) * 100:.0f}%",
            overhead <= OVERHEAD_TARGET,
        ),
    ]
    return {
        "title": "Prompt caching against llama-server",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"bundled {BUNDLED_MODEL_NAME}, {threads} threads, {SLOTS} slots and n_ctx {N_CTX} per slot on "
            f"all sides, greedy; conversations of {turns} turns of ~{TURN_TOKENS} tokens, replies of at most "
            f"{REPLY_TOKENS} tokens, {think_s:g} s think time before each request; {rounds} rounds; probes "
            f"reply {PROBE_TOKENS} tokens; prompts sharing nothing in {blocks} alternating blocks of "
            "processes (exact, off)"
        ),
        "columns": [
            "llama-server, cache_prompt",
            "llmservice, prompt_cache exact",
            "llmservice, prompt_cache off",
            "ratio / target",
        ],
        "rows": rows,
        "verdict": "Targets: "
        + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks)
        + ".",
        "notes": (
            "TTFT runs from sending the request to the first streamed chunk with text (StreamChat over "
            'gRPC; llama-server\'s /v1/chat/completions with "cache_prompt": true, over HTTP). Cached '
            "prompt tokens are the final chunk's cached_prompt_tokens, and llama-server's "
            "timings.cache_n. The think time is idle time in which the engine prefills the conversation "
            "as its next turn will resend it (prompt and reply); llama-server keeps the slot's cache and "
            "gets the same pause. p99 is the nearest rank, so below 100 samples it is the maximum. "
            "At turn 16 both caches leave the same ~130 tokens to compute; measured apart, a bare "
            "llama.cpp decode of 129 tokens takes ~830 ms over 2406 cells against ~430 ms over 180, "
            "so the turn-16/turn-1 ratio cannot drop far below ~1.8x on this machine. A /llmchat "
            "turn with tool steps, cache on and off, is its own section (bench/agent_turn.py)."
        ),
        "figures": figures,
        "raw": {
            "conversation": {side: [[asdict(r) for r in run] for run in conv[side]] for side in conv},
            "repeat": {side: [[asdict(a), asdict(b)] for a, b in reps[side]] for side in reps},
            "sharing_nothing": {mode: [asdict(r) for r in fresh_runs[mode]] for mode in fresh_runs},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="conversations per side")
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30, help="exact-repeat samples per side")
    parser.add_argument("--fresh", type=int, default=40, help="samples sharing nothing per mode")
    parser.add_argument("--blocks", type=int, default=2, help="alternating exact/off blocks for those")
    parser.add_argument("--think-s", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="a tiny run; print, do not publish")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.turns, args.repeats, args.fresh, args.blocks = 1, 2, 3, 3, 2
    result = asyncio.run(
        measure(args.rounds, args.turns, args.repeats, args.fresh, args.blocks, args.think_s, args.threads)
    )
    if args.smoke:
        print(render_section({"date": "smoke", "machine": machine(), **result}))
        print(f"elapsed {result['figures']['elapsed_s']:.1f} s")  # type: ignore[index]
        return
    publish("prompt_cache", result)


if __name__ == "__main__":
    main()
