"""The embedder stops llama.cpp's graph at the final norm and pools the tokens itself;
its vectors must be llama.cpp's own: the whole graph run, pooled by llama.cpp."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp as llama
import numpy as np
import pytest

from llmservice.providers.llamacpp.embedder import Embedder
from llmservice.providers.llamacpp.model import LlamaModel
from llmservice.providers.llamacpp.model_file import bundled_model_path
from llmservice.providers.llamacpp.settings import LlamaCppSettings

TEXTS = ["The cat sat on the mat.", "Quarterly revenue rose five percent.", "hi"]


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    loaded = LlamaModel(bundled_model_path(LlamaCppSettings().cache_dir))
    yield loaded
    loaded.close()


def llama_cpp_pooled(model: LlamaModel, tokens: list[int]) -> np.ndarray:
    """One input through a plain embedding context: whole graph, mean pooling by llama.cpp."""
    params = llama.llama_context_default_params()
    params.embeddings = True
    params.pooling_type = llama.LLAMA_POOLING_TYPE_MEAN
    params.n_ctx = params.n_batch = params.n_ubatch = 64
    params.n_threads = params.n_threads_batch = 2
    ctx = llama.llama_init_from_model(model.ptr, params)
    array = (llama.llama_token * len(tokens))(*tokens)  # kept alive while the batch points at it
    batch = llama.llama_batch_get_one(array, len(tokens))
    try:
        assert llama.llama_decode(ctx, batch) == 0
        n_embd = llama.llama_model_n_embd(model.ptr)
        v = np.ctypeslib.as_array(llama.llama_get_embeddings_seq(ctx, 0), shape=(n_embd,)).copy()
    finally:
        llama.llama_free(ctx)
    return v / np.linalg.norm(v)


async def test_vectors_equal_llama_cpps_own_with_the_output_layer_skipped(model: LlamaModel) -> None:
    embedder = Embedder(model, n_ctx=64, n_seqs=4, n_threads=2)
    try:
        inputs = [embedder.tokenize(t) for t in TEXTS]
        vectors = await embedder.embed(inputs)
        assert embedder._skip_output  # the bundled model's embeddings end at result_norm
        for tokens, vector in zip(inputs, vectors, strict=True):
            np.testing.assert_allclose(vector, llama_cpp_pooled(model, tokens), atol=2e-5)
    finally:
        embedder.close()
