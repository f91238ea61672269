"""What is particular to Ollama's native API: options, pull with progress, keep-alive, and
how Ollama names models; against the scripted fake, and against the model-list and pull
traffic Ollama's docs record (tests/vendors/ollama/fixtures/admin)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmservice.kernel.errors import InvalidRequest, NotFound
from llmservice.kernel.types import ChatRequest, Constraint, Message, Sampling, SignalOptions
from llmservice.providers.ollama.provider import OllamaProvider
from llmservice.providers.ollama.settings import OllamaSettings

from ..fakes.ollama_server import fake_ollama
from ..fakes.upstream import Upstream
from ..vendors.ollama import DIRECTORY, gate
from ..vendors.ollama.rules import go_duration_error
from ..vendors.replay import Replay, load, replaying


@contextlib.asynccontextmanager
async def ollama(
    model: str = "llama3.2:1b", **settings: Any
) -> AsyncIterator[tuple[OllamaProvider, Upstream]]:
    with fake_ollama() as upstream:
        async with OllamaProvider(OllamaSettings(base_url=upstream.url, model=model, **settings)) as provider:
            yield provider, upstream


@contextlib.asynccontextmanager
async def recorded(*fixtures: str, model: str = "m") -> AsyncIterator[tuple[OllamaProvider, Replay]]:
    """The provider against Ollama's recorded admin traffic, answered in order."""
    script = [load(DIRECTORY, f"admin/{name}") for name in fixtures]
    with replaying(script, gate) as replay:
        async with OllamaProvider(OllamaSettings(base_url=replay.url, model=model)) as provider:
            yield provider, replay


async def test_sampling_goes_into_options_and_the_keep_alive_along() -> None:
    request = ChatRequest(
        (Message("user", "Hi"),),
        sampling=Sampling(
            temperature=0.2,
            top_p=0.8,
            top_k=30,
            min_p=0.05,
            repetition_penalty=1.1,
            seed=3,
            stop=("END",),
            max_tokens=9,
        ),
        constraint=Constraint("json_object"),
    )
    async with ollama() as (provider, upstream):
        await provider.complete("llama3.2:1b", request)
    sent = upstream.requests[0]
    assert sent["options"] == {
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 30,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "seed": 3,
        "stop": ["END"],
        "num_predict": 9,
    }
    assert (sent["format"], sent["keep_alive"], sent["stream"]) == ("json", "5m", False)


async def test_pull_reports_progress_until_success() -> None:
    async with ollama() as (provider, upstream):
        steps = [step async for step in provider.pull("llama3.2:1b")]
    assert steps[0].status == "pulling manifest"
    downloading = [s for s in steps if s.total]
    assert [s.completed for s in downloading] == [0, 500, 1000]
    assert {s.digest for s in downloading} == {"sha256:abc123"}
    assert steps[-1].status == "success"
    assert upstream.requests[0] == {"model": "llama3.2:1b", "stream": True}


async def test_a_pull_of_a_model_the_registry_lacks_is_not_found_in_ollamas_words() -> None:
    """Ollama answers 200 and then streams the error: not a generic failure."""
    async with ollama() as (provider, _):
        with pytest.raises(NotFound, match=r"'missing'.*pull model manifest: file does not exist"):
            async for _ in provider.pull("missing"):
                pass


async def test_a_recorded_pull_of_a_missing_model_is_not_found() -> None:
    async with recorded("pull_missing") as (provider, replay):
        with pytest.raises(NotFound, match="pull model manifest: file does not exist"):
            async for _ in provider.pull("no-such-model"):
                pass
    assert replay.bodies() == [{"model": "no-such-model", "stream": True}]


async def test_a_recorded_pull_reports_each_step() -> None:
    async with recorded("pull") as (provider, _):
        steps = [step async for step in provider.pull("llama3.2")]
    assert [s.status for s in steps] == [
        "pulling manifest",
        "pulling digestname",
        "verifying sha256 digest",
        "writing manifest",
        "removing any unused layers",
        "success",
    ]
    assert (steps[1].total, steps[1].completed, steps[-1].model) == (2142590208, 241970, "llama3.2")


async def test_load_and_unload_through_keep_alive_show_in_list_models() -> None:
    async with ollama() as (provider, upstream):
        await provider.load("llama3.2:1b")
        loaded = {m.id: m.loaded for m in await provider.list_models()}
        await provider.unload("llama3.2:1b")
        unloaded = {m.id: m.loaded for m in await provider.list_models()}
    assert loaded == {"llama3.2:1b": True}
    assert unloaded == {"llama3.2:1b": False}
    assert [r["keep_alive"] for r in upstream.requests] == ["5m", 0]


async def test_an_untagged_model_is_the_latest_one_ollama_lists_as_loaded() -> None:
    """/api/ps names `llama3` as `llama3:latest`: both are one model."""
    async with ollama(model="llama3") as (provider, _):
        assert await provider.load_model("llama3")  # it was not loaded
        assert not await provider.load_model("llama3")  # now it is
        listed = {m.id: m.loaded for m in await provider.list_models()}
        assert listed == {"llama3": True, "llama3.2:1b": False}
        assert await provider.unload_model("llama3")  # it was loaded
        assert not await provider.unload_model("llama3:latest")


async def test_the_recorded_running_models_mark_the_untagged_default_loaded() -> None:
    async with recorded("tags", "ps", model="mistral") as (provider, _):
        models = {m.id: m.loaded for m in await provider.list_models()}
    assert models == {"mistral": True, "deepseek-r1:latest": False, "llama3.2:latest": False}


async def test_a_default_named_without_its_tag_is_listed_once() -> None:
    async with recorded("tags", "ps", model="llama3.2") as (provider, _):
        models = [m.id for m in await provider.list_models()]
    assert models == ["llama3.2", "deepseek-r1:latest"]


async def test_loading_a_model_ollama_runs_already_says_so() -> None:
    async with recorded("ps", "generate_load") as (provider, replay):
        assert not await provider.load_model("mistral")
    assert replay.bodies()[-1] == {"model": "mistral", "keep_alive": "5m"}


async def test_unloading_a_model_ollama_runs_says_it_was_loaded() -> None:
    async with recorded("ps", "generate_unload") as (provider, replay):
        assert await provider.unload_model("Mistral")  # Ollama folds the case of names
    assert replay.bodies()[-1] == {"model": "Mistral", "keep_alive": 0}


async def test_a_keep_alive_in_seconds_goes_as_a_number() -> None:
    """Ollama reads a number as seconds but a string as a Go duration, which needs its unit."""
    async with ollama(keep_alive="-1") as (provider, upstream):
        await provider.complete("llama3.2:1b", ChatRequest((Message("user", "Hi"),)))
        await provider.load("llama3.2:1b")
    assert [r["keep_alive"] for r in upstream.requests] == [-1, -1]


@pytest.mark.parametrize(
    ("keep_alive", "problem"),
    [
        ("5m", ""),
        ("1h30m", ""),
        ("-1m", ""),
        ("0", ""),
        ("3600", 'time: missing unit in duration "3600"'),
        ("5 minutes", 'time: unknown unit " minutes" in duration "5 minutes"'),
        ("soon", 'time: invalid duration "soon"'),
    ],
)
def test_the_fake_and_the_gate_refuse_keep_alives_as_go_does(keep_alive: str, problem: str) -> None:
    assert go_duration_error(keep_alive) == problem


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ChatRequest((Message("user", "x"),), signals=SignalOptions()), "signal_options"),
        (
            ChatRequest((Message("user", "x"),), constraint=Constraint("grammar", "root ::= x")),
            "response_format.grammar",
        ),
    ],
)
async def test_what_ollama_cannot_do_is_refused(request_: ChatRequest, field: str) -> None:
    async with ollama() as (provider, _):
        with pytest.raises(InvalidRequest) as raised:
            provider.validate("llama3.2:1b", request_)
    assert raised.value.field == field
