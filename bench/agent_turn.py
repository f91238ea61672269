"""A /llmchat turn with tool steps, prompt cache on and off: each step resends the turn so far.

The service (`llmservice serve`, bundled model, the HTTP shim) runs in a process of its
own, in alternating blocks with `llamacpp.prompt_cache` exact and off, never both at
once. A session is connected to the in-repo MCP server (tests/mcp_servers/demo_server.py)
and asked for three sums, one after another. The agent loop calls the model, runs the
tool it asks for, and calls the model again with the call and its result: the bundled
model makes three tool calls, then answers (four model calls; its sums are its own).
Every sample is a fresh session (a new user id, so no earlier sample is in its history);
the prompts of different samples share the tool catalogue, as a real deployment's do.
Greedy decoding, so both modes take the same steps (the cache is exact).

`--smoke` runs a tiny version and prints the section instead of publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid

import httpx

from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_NAME
from tests.servers import MCP_TOKEN, demo_mcp_server

from .report import machine, publish, render_section
from .serve_process import llmservice_serve, pct

QUESTION = "First add 1 and 2. Next add 3 and 4. Last add 5 and 6. Tell me all three sums."
MAX_STEPS = 4
LLM = {"provider": "llamacpp", "config": {"temperature": 0, "max_tokens": 64}}


async def turns(url: str, mcp_url: str, samples: int) -> list[dict[str, object]]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        for _ in range(samples):
            user = f"bench-{uuid.uuid4().hex[:8]}"
            server = {"url": mcp_url, "auth_token": MCP_TOKEN}
            reply = await http.post("/llmchat/connect", json={"user_id": user, "server": server, "llm": LLM})
            reply.raise_for_status()
            start = time.perf_counter()
            answer = await http.post("/llmchat/chat", json={"user_id": user, "message": QUESTION})
            elapsed = time.perf_counter() - start
            answer.raise_for_status()
            body = answer.json()
            out.append(
                {
                    "turn_s": elapsed,
                    "tools": body["tools"],
                    "usage": body["usage"],
                    "response": body["response"],
                }
            )
            await http.post("/llmchat/disconnect", json={"user_id": user})
    return out


async def measure(samples: int, blocks: int, threads: int) -> dict[str, object]:
    runs: dict[str, list[dict[str, object]]] = {"exact": [], "off": []}
    start = time.monotonic()
    with demo_mcp_server() as mcp_url:
        for block in range(blocks):
            for mode in ("exact", "off") if block % 2 == 0 else ("off", "exact"):
                settings = (
                    f"llamacpp.n_threads={threads}",
                    f"llamacpp.prompt_cache={mode}",
                    'llmchat.allowed_hosts=["127.0.0.1"]',
                    f"llmchat.max_steps={MAX_STEPS}",
                )
                async with llmservice_serve(*settings, http=True) as served:
                    await turns(served.http_url, mcp_url, 1)  # load the model
                    runs[mode] += await turns(served.http_url, mcp_url, samples // blocks)
    return summarise(runs, blocks, threads, time.monotonic() - start)


def summarise(
    runs: dict[str, list[dict[str, object]]], blocks: int, threads: int, elapsed_s: float
) -> dict[str, object]:
    def col(mode: str, key: str) -> list[float]:
        return [float(r[key]) for r in runs[mode]]  # type: ignore[arg-type]

    def usage(mode: str, key: str) -> float:
        return statistics.median(float(r["usage"][key]) for r in runs[mode])  # type: ignore[index]

    spread = {m: [pct(col(m, "turn_s"), q) for q in (0.5, 0.95, 0.99)] for m in runs}
    ratio = spread["exact"][0] / spread["off"][0]
    same_steps = [r["tools"] for r in runs["exact"]] == [r["tools"] for r in runs["off"]]
    n = len(runs["exact"])
    rows = [
        [
            f"turn time ms, p50 / p95 / p99 of {n}",
            *(" / ".join(f"{v * 1000:.0f}" for v in spread[m]) for m in ("exact", "off")),
            f"exact / off p50 {ratio:.2f}x",
        ],
        [
            "model calls per turn (median); tool calls",
            *(
                f"{usage(m, 'model_calls'):.0f}; {statistics.median(len(r['tools']) for r in runs[m]):.0f}"
                for m in ("exact", "off")
            ),  # type: ignore[arg-type]
            "the same tools, in the same order" if same_steps else "the steps differ",
        ],
        [
            "prompt tokens per turn, cached of all (median)",
            *(
                f"{usage(m, 'cached_prompt_tokens'):.0f} of {usage(m, 'prompt_tokens'):.0f}"
                for m in ("exact", "off")
            ),
            "",
        ],
    ]
    return {
        "title": "A /llmchat turn with tool steps, prompt cache on and off",
        "description": (__doc__ or "").strip().splitlines()[0],
        "setup": (
            f"bundled {BUNDLED_MODEL_NAME}, {threads} threads, greedy, llmchat.max_steps {MAX_STEPS}, "
            f"the demo MCP server (four tools); {n} turns per mode in {blocks} alternating blocks of "
            "processes;"
            f" question: {json.dumps(QUESTION)}"
        ),
        "columns": ["prompt_cache exact", "prompt_cache off", "ratio / note"],
        "rows": rows,
        "verdict": f"Each tool step's prompt reuses the one before: the turn takes {ratio:.2f}x the time "
        "it takes with the cache off.",
        "notes": (
            "Turn time is the whole POST /llmchat/chat (not streamed): every model call and tool call "
            "of the turn."
        ),
        "figures": {
            "turn_p50_ms": {m: spread[m][0] * 1000 for m in spread},
            "ratio": ratio,
            "elapsed_s": elapsed_s,
        },
        "raw": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20, help="turns per mode")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="a tiny run; print, do not publish")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.blocks = 2, 2
    result = asyncio.run(measure(args.samples, args.blocks, args.threads))
    if args.smoke:
        print(render_section({"date": "smoke", "machine": machine(), **result}))
        print(json.dumps(result["raw"], indent=1)[:3000])
        return
    publish("agent_turn", result)


if __name__ == "__main__":
    main()
