"""Embeddings from the OpenAI family against the fake OpenAI server: body, order, errors, Azure."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr

from llmservice.kernel.embedding import EmbedRequest
from llmservice.kernel.errors import InvalidRequest, NotFound, ProviderAuthFailed, Unavailable
from llmservice.providers.openai_family.provider import azure_openai_provider
from llmservice.providers.openai_family.settings import AzureOpenAISettings

from ..fakes.openai_server import Reply, fake_openai, fake_vector
from .test_openai_family import KEY, provider_for

TEXTS = ("the cat sat", "on the mat", "quarterly revenue")


async def test_vectors_come_back_in_input_order_with_usage() -> None:
    with fake_openai() as fake:
        async with provider_for(fake) as provider:
            result = await provider.embed("text-embedding-3-small", EmbedRequest(TEXTS, user="u-1"))
    assert fake.paths == ["/v1/embeddings"]
    assert fake.requests[0] == {
        "model": "text-embedding-3-small",
        "input": list(TEXTS),
        "encoding_format": "float",
        "user": "u-1",
    }
    for text, vector in zip(TEXTS, result.vectors, strict=True):  # the fake answers in reverse order
        assert np.allclose(vector, fake_vector(text, 8))
    assert result.prompt_tokens == 8


async def test_dimensions_go_upstream_and_are_refused_when_not_honoured() -> None:
    with fake_openai(Reply(), Reply(honour_dimensions=False)) as fake:
        async with provider_for(fake) as provider:
            shortened = await provider.embed("m", EmbedRequest(TEXTS[:1], dimensions=4))
            with pytest.raises(InvalidRequest) as raised:
                await provider.embed("m", EmbedRequest(TEXTS[:1], dimensions=4))
    assert fake.requests[0]["dimensions"] == 4
    assert len(shortened.vectors[0]) == 4
    assert raised.value.field == "dimensions"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(status=401, error=f"bad key {KEY}"), ProviderAuthFailed),
        (Reply(status=400, error="input too long"), InvalidRequest),
        (Reply(malformed=True), Unavailable),
        (Reply(misshapen=True), Unavailable),
    ],
)
async def test_upstream_failures_are_domain_errors_without_the_key(reply: Reply, error: type) -> None:
    with fake_openai(reply) as fake:
        async with provider_for(fake) as provider:
            with pytest.raises(error) as raised:
                await provider.embed("m", EmbedRequest(TEXTS))
    assert KEY not in str(raised.value)


async def test_a_5xx_is_retried() -> None:
    with fake_openai(Reply(status=503, error="busy"), Reply()) as fake:
        async with provider_for(fake) as provider:
            result = await provider.embed("m", EmbedRequest(TEXTS[:1]))
    assert len(fake.requests) == 2
    assert len(result.vectors) == 1


async def test_azure_embeds_with_its_deployment_only() -> None:
    with fake_openai() as fake:
        settings = AzureOpenAISettings(api_key=SecretStr(KEY), endpoint=fake.url, deployment="emb-eu")
        async with azure_openai_provider(settings) as provider:
            result = await provider.embed("emb-eu", EmbedRequest(TEXTS[:2]))
            with pytest.raises(NotFound):
                await provider.embed("other", EmbedRequest(TEXTS[:2]))
    assert fake.paths == ["/openai/deployments/emb-eu/embeddings"]
    assert fake.headers[0]["api-key"] == KEY
    assert len(result.vectors) == 2
