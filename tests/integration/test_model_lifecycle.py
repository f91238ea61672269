"""Local models loaded on first use or on request, unloaded on request, when idle or under a
memory budget, and the default model swapped while a stream runs on it.

The second model is a copy of the bundled GGUF in the models dir, served as `second`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from llmservice.kernel.errors import NotFound
from llmservice.kernel.types import ChatRequest, Message, Sampling, StreamEnd, TokenDelta
from llmservice.observability.metrics import provider_readings
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_ID, bundled_model_path
from llmservice.providers.llamacpp.provider import LlamaCppProvider
from llmservice.providers.llamacpp.settings import LlamaCppSettings

from .conftest import eventually

BUNDLED = bundled_model_path(LlamaCppSettings().cache_dir)
HI = ChatRequest((Message("user", "Say hi."),), sampling=Sampling(max_tokens=3))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding `second.gguf`: the bundled file under another name."""
    where = tmp_path_factory.mktemp("models")
    try:
        os.link(BUNDLED, where / "second.gguf")
    except OSError:  # another file system
        shutil.copyfile(BUNDLED, where / "second.gguf")
    return where


def local(models_dir: Path, **settings: float) -> LlamaCppSettings:
    return LlamaCppSettings(
        model_path=BUNDLED,
        model_id=BUNDLED_MODEL_ID,
        cache_dir=models_dir,
        n_ctx=512,
        n_slots=1,
        **settings,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def provider(models_dir: Path, **settings: float) -> AsyncIterator[LlamaCppProvider]:
    async with LlamaCppProvider(local(models_dir, **settings)) as started:
        yield started


async def loaded(p: LlamaCppProvider) -> dict[str, bool]:
    return {m.id: m.loaded for m in await p.list_models()}


async def reply(p: LlamaCppProvider, model: str) -> str:
    return "".join([e.text async for e in p.stream(model, HI) if isinstance(e, TokenDelta)])


async def test_models_load_and_unload_on_request_and_list_models_says_which(models_dir: Path) -> None:
    async with provider(models_dir) as p:
        assert await loaded(p) == {BUNDLED_MODEL_ID: True, "second": False}
        assert await p.load_model("second") is True
        assert await p.load_model("second") is False  # loaded already
        assert await loaded(p) == {BUNDLED_MODEL_ID: True, "second": True}
        [info] = [m for m in await p.list_models() if m.id == "second"]
        assert (info.quantization, info.size_bytes) == ("Q4_1", BUNDLED.stat().st_size)
        assert await p.unload_model("second") is True
        assert await p.unload_model("second") is False
        assert await loaded(p) == {BUNDLED_MODEL_ID: True, "second": False}
        p.pool.wait_closed()
        assert len(p.pool.values()) == 1
        with pytest.raises(NotFound, match=r"'nothing' is not served") as missing:
            await p.unload_model("nothing")
        # Not the other models (a caller may use only some), not the server's directory.
        assert "second" not in str(missing.value)
        assert str(models_dir) not in str(missing.value)


async def test_a_model_loads_on_first_use(models_dir: Path) -> None:
    async with provider(models_dir) as p:
        p.validate("second", HI)
        assert await reply(p, "second") == await reply(p, BUNDLED_MODEL_ID)
        assert (await loaded(p))["second"]


async def test_the_memory_budget_unloads_the_least_recently_used_model(models_dir: Path) -> None:
    one_and_a_half = BUNDLED.stat().st_size * 3 // 2 >> 20
    async with provider(models_dir, memory_budget_mb=one_and_a_half) as p:
        await reply(p, "second")
        assert await loaded(p) == {BUNDLED_MODEL_ID: False, "second": True}
        await reply(p, BUNDLED_MODEL_ID)  # and back: now second goes
        assert await loaded(p) == {BUNDLED_MODEL_ID: True, "second": False}
        p.pool.wait_closed()
        assert len(p.pool.values()) == 1


async def test_an_idle_model_unloads_and_loads_again_on_its_next_use(models_dir: Path) -> None:
    async with provider(models_dir, idle_unload_s=0.3) as p:
        await eventually(lambda: not p.pool.loaded(), timeout_s=10)
        assert await loaded(p) == {BUNDLED_MODEL_ID: False, "second": False}
        assert await reply(p, BUNDLED_MODEL_ID)  # loaded again for it


async def test_a_hot_swap_lets_a_running_stream_finish_unchanged_on_the_old_engine(models_dir: Path) -> None:
    long = ChatRequest((Message("user", "Count from one to twenty."),), sampling=Sampling(max_tokens=40))
    async with provider(models_dir) as p:
        alone = [e async for e in p.stream(BUNDLED_MODEL_ID, long)]
        [old] = p.pool.values()
        events = []
        cold = replace(long, cache_salt="hot-swap")  # computed afresh, as the first: usage alike too
        async with contextlib.aclosing(p.stream(BUNDLED_MODEL_ID, cold)) as running:
            async for event in running:
                events.append(event)
                if len(events) == 3:
                    assert await p.load_model("second", make_default=True)
                    assert p.default_model == "second"
                    assert BUNDLED_MODEL_ID not in p.pool.loaded()
                    assert old in p.pool.values()  # retired, still serving this stream
        assert events == alone
        assert isinstance(events[-1], StreamEnd)
        await asyncio.to_thread(p.pool.wait_closed)
        assert old not in p.pool.values()  # closed after its last stream
        assert p.pool.loaded() == ["second"]
        assert await reply(p, p.default_model)
        assert p.pool.loaded() == ["second"]


async def test_a_loaded_model_says_where_it_runs_and_whether_its_replies_are_batch_invariant(
    models_dir: Path,
) -> None:
    """On this CPU-only build: the CPU, no layer offloaded; ListModels and /metrics say so."""
    import llama_cpp as llama

    async with provider(models_dir) as p:
        [info] = [m for m in await p.list_models() if m.id == BUNDLED_MODEL_ID]
        [loaded_model] = p.pool.values()
        layers = llama.llama_model_n_layer(loaded_model.model.ptr) + 1
        assert (info.device, info.gpu_layers, info.layers, info.batch_invariant) == ("CPU", 0, layers, True)
        [unloaded] = [m for m in await p.list_models() if m.id == "second"]
        assert (unloaded.device, unloaded.layers) == ("", 0)
        read = provider_readings([("llamacpp", p)])  # what /metrics serves
        gauges = {(name, tuple(sorted(labels.items()))): value for name, _, labels, value in read}
        model = (("model", BUNDLED_MODEL_ID), ("provider", "llamacpp"))
        assert gauges[("llmservice_model_gpu_layers", (("device", "CPU"), *model))] == 0
        assert gauges[("llmservice_model_layers", model)] == layers
    async with provider(models_dir, batch_invariant=False) as loose:  # turned off: not promised
        [info] = [m for m in await loose.list_models() if m.id == BUNDLED_MODEL_ID]
        assert info.batch_invariant is False
