"""What is particular to Ollama's native API: options, pull with progress, keep-alive."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from llmservice.kernel.errors import InvalidRequest, Unavailable
from llmservice.kernel.types import ChatRequest, Constraint, Message, Sampling, SignalOptions
from llmservice.providers.ollama.provider import OllamaProvider
from llmservice.providers.ollama.settings import OllamaSettings

from ..fakes.ollama_server import fake_ollama
from ..fakes.upstream import Upstream


@contextlib.asynccontextmanager
async def ollama() -> AsyncIterator[tuple[OllamaProvider, Upstream]]:
    with fake_ollama() as upstream:
        async with OllamaProvider(OllamaSettings(base_url=upstream.url, model="llama3.2:1b")) as provider:
            yield provider, upstream


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


async def test_a_failed_pull_says_why() -> None:
    async with ollama() as (provider, _):
        with pytest.raises(Unavailable, match="file does not exist"):
            async for _ in provider.pull("missing"):
                pass


async def test_load_and_unload_through_keep_alive_show_in_list_models() -> None:
    async with ollama() as (provider, upstream):
        await provider.load("llama3.2:1b")
        loaded = {m.id: m.loaded for m in await provider.list_models()}
        await provider.unload("llama3.2:1b")
        unloaded = {m.id: m.loaded for m in await provider.list_models()}
    assert loaded == {"llama3.2:1b": True}
    assert unloaded == {"llama3.2:1b": False}
    assert [r["keep_alive"] for r in upstream.requests] == ["5m", 0]


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
