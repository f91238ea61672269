"""A soak: 10,000 streamed chat completions through the HTTP shim of `llmservice serve`, by
the openai SDK, four at a time, on the bundled model (one token each, so the run is about
the service's own path per request, not the model). The process's resident memory, read
at the 1,000th request (everything warm) and at the end, may grow by 5 % at most.

The figures go to test-artifacts/faults/soak.json and docs/operations.md ("Fault suite").
"""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

from ..servers import ROOT, Memory, llmservice_serve
from .conftest import ONE_THREAD

REQUESTS = 10_000
WARM_AT = 1_000
CONCURRENCY = 4
MB = 1 << 20
ARTIFACT = ROOT / "test-artifacts" / "faults" / "soak.json"


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_10k_streamed_requests_leave_memory_flat() -> None:
    with llmservice_serve("log_level=WARNING", ONE_THREAD, http=True) as served:
        async with openai.AsyncOpenAI(
            api_key="unused", base_url=served.base_url + "/v1", max_retries=0
        ) as sdk:
            sent = 0
            finished: dict[str, int] = {}
            at: dict[int, tuple[float, Memory]] = {}
            start = time.monotonic()

            async def one() -> None:
                stream = await sdk.chat.completions.create(
                    model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=1, stream=True
                )
                reason = ""
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        reason = chunk.choices[0].finish_reason
                finished[reason] = finished.get(reason, 0) + 1

            async def client() -> None:
                nonlocal sent
                while sent < REQUESTS:
                    sent += 1
                    await one()
                    done = sum(finished.values())
                    if done in (WARM_AT, REQUESTS):
                        at[done] = (time.monotonic() - start, served.memory())

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            elapsed = time.monotonic() - start

    assert finished == {"length": REQUESTS}  # every stream ended as a stream ends, none failed
    (_, warm), (_, end) = at[WARM_AT], at[REQUESTS]
    figures = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "max_tokens": 1,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(REQUESTS / elapsed, 1),
        "rss_mb_at_1k": round(warm.rss / MB, 1),
        "rss_mb_at_end": round(end.rss / MB, 1),
        "rss_ratio": round(end.rss / warm.rss, 4),
        "anon_mb_at_1k": round(warm.anon / MB, 1),
        "anon_mb_at_end": round(end.anon / MB, 1),
        "anon_ratio": round(end.anon / warm.anon, 4),
    }
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"soak: {json.dumps(figures)}")
    assert end.rss / warm.rss <= 1.05, figures
    assert end.anon / warm.anon <= 1.05, figures  # what the process allocated, without the model's pages
