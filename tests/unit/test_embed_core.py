"""LLMCore.embed over a provider that counts what it is asked: cache, order, errors by field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmservice.kernel.embedding import EmbedRequest, EmbedResult
from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.provider import Provider
from llmservice.service.core import LLMCore
from llmservice.service.embed_cache import EmbeddingCache
from llmservice.service.registry import ProviderRegistry

from ..fakes.one_model import OneModel


class Counting(OneModel):
    """Embeds a text as [len, first code point]; records every batch it is given."""

    name = "counting"

    def __init__(self) -> None:
        self.batches: list[tuple[str, ...]] = []

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        self.batches.append(request.input)
        for i, text in enumerate(request.input):
            if text == "too long":
                raise InvalidRequest(request.field(i), "is too long")
        vectors = tuple(np.array([len(t), ord(t[0])], dtype=np.float32) for t in request.input)
        return EmbedResult(vectors, len(request.input))


class NoEmbeddings(Counting):
    name = "plain"
    embed = Provider.embed  # type: ignore[assignment]


def core_with(provider: Provider, cache: EmbeddingCache | None) -> LLMCore:
    return LLMCore(ProviderRegistry({provider.name: provider}, provider.name), cache, max_inputs=4)


async def test_equal_with_and_without_the_cache_and_only_misses_are_embedded(tmp_path: Path) -> None:
    texts = ("alpha", "beta", "gamma")
    plain = await core_with(Counting(), None).embed(EmbedRequest(texts))
    provider = Counting()
    async with EmbeddingCache(tmp_path / "e.sqlite3") as cache:
        core = core_with(provider, cache)
        first = await core.embed(EmbedRequest(texts[:2]))
        second = await core.embed(EmbedRequest(texts))
    assert provider.batches == [("alpha", "beta"), ("gamma",)]
    assert (cache.hits, cache.misses) == (2, 3)
    assert (first.cached, second.cached) == (0, 2)
    assert (second.prompt_tokens, plain.prompt_tokens) == (1, 3)  # only what was embedded now
    for a, b in zip(plain.vectors, second.vectors, strict=True):
        assert np.array_equal(a, b)
    assert (second.model, second.provider) == ("m", "counting")


async def test_an_error_names_the_callers_field_when_others_were_cached(tmp_path: Path) -> None:
    async with EmbeddingCache(tmp_path / "e.sqlite3") as cache:
        core = core_with(Counting(), cache)
        await core.embed(EmbedRequest(("a",)))
        with pytest.raises(InvalidRequest) as raised:
            await core.embed(EmbedRequest(("a", "too long")))
    assert raised.value.field == "input[1]"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (EmbedRequest(()), "input"),
        (EmbedRequest(("a", "")), "input[1]"),
        (EmbedRequest(("a",) * 5), "input"),
        (EmbedRequest(("a",), dimensions=0), "dimensions"),
    ],
)
async def test_bad_input_is_refused_by_field(request_: EmbedRequest, field: str) -> None:
    provider = Counting()
    with pytest.raises(InvalidRequest) as raised:
        await core_with(provider, None).embed(request_)
    assert raised.value.field == field
    assert provider.batches == []


async def test_a_provider_without_embeddings_says_so_by_name() -> None:
    with pytest.raises(InvalidRequest) as raised:
        await core_with(NoEmbeddings(), None).embed(EmbedRequest(("a",)))
    assert raised.value.field == "model"
    assert "plain" in raised.value.message
