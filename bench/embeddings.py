"""Embed over gRPC: embeddings per second for batches of 1, 8 and 64 short texts, uncached and cached.

The service runs in this process on the bundled model with its SQLite embedding cache
in a fresh directory. Each round, for each batch size, one call embeds texts never seen
before (uncached: the model runs) and the next asks for the same texts again (cached:
every vector comes from the cache), so the two sides run back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_NAME
from llmservice.providers.llamacpp.settings import LlamaCppSettings
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import EmbeddingsSettings, ServerSettings, Settings

from .report import publish

BATCHES = (1, 8, 64)
_WORDS = "river stone lamp orchard violet engine harbour quiet paper thunder silver meadow".split()  # noqa: SIM905


def short_texts(n: int, counter: itertools.count[int]) -> list[str]:
    """`n` short texts (about ten tokens each) that no earlier call asked for."""
    texts = []
    for _ in range(n):
        k = next(counter)
        words = [_WORDS[(k * 7 + i * 5) % len(_WORDS)] for i in range(6)]
        texts.append(f"note {k}: " + " ".join(words))
    return texts


async def timed(stub: pb_grpc.LLMServiceStub, texts: list[str]) -> tuple[float, int]:
    """(embeddings per second, how many came from the cache) for one Embed call."""
    start = time.perf_counter()
    response = await stub.Embed(pb.EmbedRequest(input=texts))
    elapsed = time.perf_counter() - start
    assert len(response.embeddings) == len(texts)
    return len(texts) / elapsed, response.cached


async def measure(rounds: int, cache_dir: Path) -> dict[str, object]:
    settings = Settings(
        server=ServerSettings(grpc_port=0, http_port=-1),
        llamacpp=LlamaCppSettings(),
        embeddings=EmbeddingsSettings(cache_dir=cache_dir),
    )
    counter = itertools.count()
    runs: dict[tuple[int, bool], list[float]] = {(b, c): [] for b in BATCHES for c in (False, True)}
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.LLMServiceStub(channel)
        await timed(stub, short_texts(8, counter))  # warm up: the embedding context is made on first use
        for _ in range(rounds):
            for batch in BATCHES:
                texts = short_texts(batch, counter)
                rate, cached = await timed(stub, texts)
                assert cached == 0, "an uncached call was answered from the cache"
                runs[batch, False].append(rate)
                rate, cached = await timed(stub, texts)
                assert cached == batch, "a cached call ran the model"
                runs[batch, True].append(rate)

    def med(batch: int, cached: bool) -> float:
        return float(statistics.median(runs[batch, cached]))

    rows = []
    for batch in BATCHES:
        ratio = statistics.median(c / u for u, c in zip(runs[batch, False], runs[batch, True], strict=True))
        rows.append(
            [
                f"batch of {batch}, embeddings/s",
                f"{med(batch, False):.1f}",
                f"{med(batch, True):.1f}",
                f"{ratio:.1f}",
            ]
        )
    return {
        "title": "Embed throughput, uncached and cached",
        "description": __doc__.strip().splitlines()[0] if __doc__ else "",
        "setup": (
            f"bundled {BUNDLED_MODEL_NAME} in embedding mode (llamacpp.embeddings defaults), "
            f"texts of ~10 tokens, median of {rounds} rounds, each cached call right after its uncached one"
        ),
        "columns": [
            "uncached (model runs)",
            "cached (SQLite)",
            "ratio (cached / uncached), median of rounds",
        ],
        "rows": rows,
        "verdict": "The cache answers a repeated input without running the model; uncached, the model's "
        "layers run on every token of every input (the output layer is skipped).",
        "raw": {f"{b}-{'cached' if c else 'uncached'}": v for (b, c), v in runs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as cache_dir:
        result = asyncio.run(measure(args.rounds, Path(cache_dir)))
    publish("embeddings", result)


if __name__ == "__main__":
    main()
