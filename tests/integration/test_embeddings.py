"""Embeddings from the bundled model: Embed over gRPC, /v1/embeddings through the openai client,
the cache, bad input by field, and chat undisturbed while embedding runs.

SmolLM2 135M Instruct is no embedding model (its hidden states, mean-pooled): these tests check the
plumbing and that similar texts land nearer than unrelated ones, not retrieval quality.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.app import running_service
from llmservice.providers.llamacpp.model_file import bundled_model_path
from llmservice.providers.llamacpp.settings import LlamaCppEmbeddingSettings, LlamaCppSettings
from llmservice.rest.server import running_shim
from llmservice.service.core import LLMCore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import EmbeddingsSettings, ServerSettings, Settings

TEXTS = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Quarterly revenue rose five percent."]


@dataclass
class Embedding:
    stub: pb_grpc.LLMServiceStub
    base_url: str
    core: LLMCore


@pytest.fixture(scope="module")
async def local(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Embedding]:
    settings = Settings(
        server=ServerSettings(grpc_port=0),
        llamacpp=LlamaCppSettings(embeddings=LlamaCppEmbeddingSettings(n_ctx=64, n_seqs=4)),
        embeddings=EmbeddingsSettings(cache_dir=tmp_path_factory.mktemp("embeddings"), max_inputs=100),
    )
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0) as http_port,
    ):
        stub = pb_grpc.LLMServiceStub(channel)
        yield Embedding(stub, f"http://127.0.0.1:{http_port}/v1", server.servicer.core)


def vectors(reply: pb.EmbedResponse) -> list[np.ndarray]:
    return [np.array(e.values, dtype=np.float32) for e in reply.embeddings]


async def test_embed_gives_one_unit_vector_per_input_and_similar_texts_are_nearer(local: Embedding) -> None:
    reply = await local.stub.Embed(pb.EmbedRequest(input=TEXTS))
    cat, sitting, revenue = vectors(reply)
    assert len(cat) == 576  # SmolLM2 135M's hidden size
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in (cat, sitting, revenue))
    assert cat @ sitting > cat @ revenue
    assert (reply.model, reply.provider) == ("smollm2-135m-instruct-q4_1", "llamacpp")


async def test_equal_with_and_without_the_cache_and_hits_are_counted(local: Embedding) -> None:
    cache = local.core.embed_cache
    assert cache is not None
    texts = ["a text only this test embeds", "and another one"]
    hits, misses = cache.hits, cache.misses
    first = await local.stub.Embed(pb.EmbedRequest(input=texts))
    again = await local.stub.Embed(pb.EmbedRequest(input=[texts[1], texts[0], "one more"]))
    assert (cache.hits - hits, cache.misses - misses) == (2, 3)
    assert (first.cached, again.cached) == (0, 2)
    assert first.prompt_tokens > 0
    assert again.prompt_tokens < first.prompt_tokens
    a, b = vectors(first)
    b2, a2, _ = vectors(again)
    assert np.array_equal(a, a2)
    assert np.array_equal(b, b2)
    local.core.embed_cache = None  # the same inputs, computed afresh
    try:
        fresh = await local.stub.Embed(pb.EmbedRequest(input=texts))
    finally:
        local.core.embed_cache = cache
    for x, y in zip(vectors(first), vectors(fresh), strict=True):
        assert np.array_equal(x, y)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.EmbedRequest(), "input"),
        (pb.EmbedRequest(input=["fine", ""]), "input[1]"),
        (pb.EmbedRequest(input=["fine", "word " * 100]), "input[1]"),  # more than n_ctx = 64 tokens
        (pb.EmbedRequest(input=["fine"], dimensions=16), "dimensions"),
        # Each fits, but together they pass llamacpp.embeddings.max_request_tokens (2048).
        (pb.EmbedRequest(input=["word " * 50] * 50), "input"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    local: Embedding, request_: pb.EmbedRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local.stub.Embed(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(raised.value.trailing_metadata() or ())["llm-error-param"] == field


async def test_an_unknown_model_is_not_found(local: Embedding) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local.stub.Embed(pb.EmbedRequest(input=["x"], model="no-such-model"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_models_describes_the_local_model(local: Embedding) -> None:
    (model,) = (await local.stub.ListModels(pb.ListModelsRequest())).models
    assert model.capabilities.embeddings
    assert model.loaded
    assert model.quantization == "Q4_1"  # the bundled GGUF's general.file_type, 3
    assert model.size_bytes == bundled_model_path(LlamaCppSettings().cache_dir).stat().st_size
    assert model.context_length == LlamaCppSettings().n_ctx


async def test_embeddings_off_is_said_in_list_models_and_refused(tmp_path: Path) -> None:
    settings = Settings(
        server=ServerSettings(grpc_port=0, http_port=-1),
        llamacpp=LlamaCppSettings(embeddings=LlamaCppEmbeddingSettings(enabled=False)),
        embeddings=EmbeddingsSettings(cache=False),
    )
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pb_grpc.LLMServiceStub(channel)
        (model,) = (await stub.ListModels(pb.ListModelsRequest())).models
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(pb.EmbedRequest(input=["x"]))
    assert not model.capabilities.embeddings
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "llamacpp.embeddings.enabled" in (raised.value.details() or "")


async def test_the_openai_client_async_both_encodings(local: Embedding) -> None:
    reference = vectors(await local.stub.Embed(pb.EmbedRequest(input=TEXTS)))
    async with openai.AsyncOpenAI(api_key="unused", base_url=local.base_url, max_retries=0) as client:
        default = await client.embeddings.create(model="smollm2-135m-instruct-q4_1", input=TEXTS)  # base64
        floats = await client.embeddings.create(model="", input=TEXTS[0], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    for d, ref in zip(default.data, reference, strict=True):
        assert np.array_equal(np.array(d.embedding, dtype=np.float32), ref)
    assert np.allclose(floats.data[0].embedding, reference[0])
    assert default.model == "smollm2-135m-instruct-q4_1"
    assert default.object == "list"
    assert default.usage.prompt_tokens == default.usage.total_tokens


async def test_the_openai_client_sync(local: Embedding) -> None:
    def call() -> int:
        with openai.OpenAI(api_key="unused", base_url=local.base_url, max_retries=0) as client:
            return len(client.embeddings.create(model="", input=["one", "two"]).data)

    assert await asyncio.to_thread(call) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "", "input": []}, "input"),
        ({"model": "", "input": ["ok", 3]}, "input[1]"),
        ({"model": "", "input": [[1, 2, 3]]}, "input[0]"),
        ({"model": "", "input": "ok", "dimensions": 3}, "dimensions"),
        ({"model": "", "input": "ok", "dimensions": 2**31}, "dimensions"),  # found by test_shim_openapi
        ({"model": "", "input": "ok", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "", "input": "ok", "truncate": True}, "truncate"),
        ({"model": "", "input": "word " * 100}, "input[0]"),
    ],
)
async def test_bad_bodies_are_400_naming_the_param(
    local: Embedding, body: dict[str, object], param: str
) -> None:
    async with httpx.AsyncClient(base_url=local.base_url) as client:
        response = await client.post("/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_chat_answers_the_same_while_embeddings_run(local: Embedding) -> None:
    ask = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content="Name three colours.")], temperature=0, max_tokens=12
    )
    alone = (await local.stub.Chat(ask)).content
    many = [f"text number {i} about something else" for i in range(40)]
    embedding = asyncio.ensure_future(local.stub.Embed(pb.EmbedRequest(input=many)))
    beside = (await local.stub.Chat(ask)).content
    assert len((await embedding).embeddings) == 40
    assert beside == alone
