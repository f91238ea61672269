"""A random-weight GGUF made on the spot loads, templates and decodes like a real model:
the model the GPU check builds when the bundled one cannot travel."""

from __future__ import annotations

from pathlib import Path

from bench.random_gguf import Shape, write
from llmservice.kernel.types import ChatRequest, Message, Sampling, TokenDelta
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.llamacpp.settings import LlamaCppSettings


async def test_a_random_model_decodes_with_the_bundled_tokenizer_and_reproduces_a_seeded_reply(
    tmp_path: Path,
) -> None:
    path = tmp_path / "random.gguf"
    shape = Shape(hidden=64, layers=3, heads=4, kv_heads=2)
    parameters = write(path, shape, seed=7)
    assert parameters > 49152 * 64  # the vocabulary's embedding alone
    settings = LlamaCppSettings(model_path=path, model_id="random", n_ctx=256, n_slots=2, cache_dir=tmp_path)
    ask = ChatRequest((Message("user", "Hi"),), sampling=Sampling(max_tokens=6, temperature=0.8, seed=3))
    async with LlamaCppProvider(settings) as provider:
        replies = [
            [e.text async for e in provider.stream("random", ask) if isinstance(e, TokenDelta)]
            for _ in range(2)
        ]
        [info] = await provider.list_models()
    assert len(replies[0]) == 6
    assert replies[0] == replies[1]
    assert (info.device, info.layers) == ("CPU", shape.layers + 1)


async def test_the_gpu_check_measures_the_engine_on_this_build(tmp_path: Path) -> None:
    """Its CPU run: the check the GPU machine runs, on the build and device at hand."""
    from bench.gpu_check import measure

    path = tmp_path / "random.gguf"
    write(path, Shape(hidden=64, layers=2, heads=4, kv_heads=2))
    result = await measure(path, [1, 2], tokens=8, samples=3)
    figures = result["figures"]
    assert figures["device"] == "CPU"
    assert figures["gpu_layers"] == 0
    assert set(figures["tokens_per_s"]) == {1, 2}
    assert all(rate > 0 for rate in figures["tokens_per_s"].values())
    assert figures["batch_invariant_observed"] is True  # what the CPU engine promises
    assert len(figures["idle_ttft_ms"]) == len(figures["loaded_ttft_ms"]) == 3
