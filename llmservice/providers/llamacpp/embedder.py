"""Embeddings from the loaded GGUF: a llama.cpp context of its own in embedding mode.

It shares the model's weights with the decode engine (loaded once) but owns its context
and the one thread that uses it, so embedding never touches the engine's caches or its
thread; `llama_decode` releases the GIL, so the event loop keeps serving meanwhile.
Inputs are packed into decode steps of up to `n_ctx` tokens and `n_seqs` inputs, each its
own sequence, pooled as the GGUF says (mean when it says nothing) and scaled to unit length.

In embedding mode llama.cpp still runs a generative model's output layer on every token,
and on a large vocabulary (262k words for Gemma 3) that is most of the work. So the context takes
per-token embeddings and this module pools them, and an eval callback stops the graph
once those are computed (the final norm's output), skipping the output layer. At first
use one input is embedded both ways; if the vectors ever differed, the whole graph would
run from then on.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import llama_cpp as llama
import numpy as np

from llmservice.kernel.embedding import Vector
from llmservice.providers.llamacpp.gguf_info import meta
from llmservice.providers.llamacpp.model import LlamaModel

log = logging.getLogger(__name__)

# With pooling off, llama.cpp names the per-token embeddings (for a generative model the
# final norm's output, the output layer's input) result_embd_pooled: every node after it
# in the graph is the output layer's.
_STOP_AT = b"result_embd_pooled"
_ggml = ctypes.CDLL(str(next(iter(llama.__path__)) + "/lib/libggml-base.so"))
_ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
_ggml.ggml_get_name.restype = ctypes.c_char_p

_POOLINGS = {
    llama.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama.LLAMA_POOLING_TYPE_CLS: "cls",
    llama.LLAMA_POOLING_TYPE_LAST: "last",
}


class Embedder:
    """Embeds token lists on its own thread; the context is made on first use."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_seqs: int, n_threads: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.n_seqs = n_seqs
        self.n_embd = llama.llama_model_n_embd(model.ptr)
        self.pooling = gguf_pooling(model)
        self._threads = n_threads or max(1, (os.cpu_count() or 1) // 2)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llamacpp-embed")
        self._ctx: llama.llama_context_p | None = None
        self._batch: llama.llama_batch | None = None
        self._skip_output = True  # stop the graph at _STOP_AT; checked at first use
        self._on_node = llama.ggml_backend_sched_eval_callback(self._eval)  # kept alive with the context

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=True, parse_special=False)

    async def embed(self, inputs: Sequence[list[int]]) -> list[Vector]:
        """One unit vector per token list (each at most n_ctx tokens), in order."""
        # One executor job per decode step: a caller that goes away (cancelling this
        # coroutine) stops the work at the next step, and its queued steps never run.
        loop = asyncio.get_running_loop()
        out: list[Vector] = []
        for group in _groups(list(inputs), self.n_ctx, self.n_seqs):
            out += await loop.run_in_executor(self._executor, self._embed_group, group)
        return out

    def close(self) -> None:
        self._executor.submit(self._free).result()
        self._executor.shutdown()

    # The embedder's thread from here on.

    def _embed_group(self, group: list[list[int]]) -> list[Vector]:
        if self._ctx is None:
            self._ready()
            self._check_skip(group[0])
        return self._decode_pooled(group)

    def _check_skip(self, sample: list[int]) -> None:
        """Keep the early stop only if it gives the whole graph's vectors for `sample`."""
        fast = self._decode_pooled([sample])[0]
        self._skip_output = False
        whole = self._decode_pooled([sample])[0]
        self._skip_output = bool(np.allclose(fast, whole, atol=1e-5))
        if not self._skip_output:
            log.warning("%s: embeddings differ when the graph stops early; running it whole", self.model.path)

    def _eval(self, tensor: int, ask: bool, _: int) -> bool:
        """ggml's eval callback: asked which nodes to stop at, then told each was computed."""
        if ask:
            return self._skip_output and _ggml.ggml_get_name(tensor) == _STOP_AT
        return False  # the stop node is computed: the rest of the graph is skipped

    def _decode_pooled(self, group: list[list[int]]) -> list[Vector]:
        ctx, batch = self._ready()
        llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
        n = sum(map(len, group))
        views = [np.ctypeslib.as_array(a, shape=(self.n_ctx,)) for a in (batch.token, batch.pos)]
        views[0][:n] = np.concatenate(group)
        views[1][:n] = np.concatenate([np.arange(len(t)) for t in group])
        np.ctypeslib.as_array(batch.n_seq_id, shape=(self.n_ctx,))[:n] = 1
        np.ctypeslib.as_array(batch.logits, shape=(self.n_ctx,))[:n] = 1  # pooling reads every token
        at = 0
        for seq, tokens in enumerate(group):
            for i in range(at, at + len(tokens)):
                batch.seq_id[i][0] = seq
            at += len(tokens)
        batch.n_tokens = n
        rc = llama.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) embedding {len(group)} inputs")
        vectors = []
        at = 0
        for tokens in group:
            rows = np.stack([self._token_embedding(ctx, i) for i in range(at, at + len(tokens))])
            at += len(tokens)
            v = _pool(rows, self.pooling)
            norm = float(np.linalg.norm(v))
            vectors.append((v / norm).astype(np.float32) if norm > 0 else v)
        return vectors

    def _token_embedding(self, ctx: llama.llama_context_p, i: int) -> Vector:
        row: Vector = np.ctypeslib.as_array(llama.llama_get_embeddings_ith(ctx, i), shape=(self.n_embd,))
        return row

    def _ready(self) -> tuple[llama.llama_context_p, llama.llama_batch]:
        if self._ctx is None or self._batch is None:
            params = llama.llama_context_default_params()
            params.embeddings = True
            params.pooling_type = llama.LLAMA_POOLING_TYPE_NONE  # per-token: pooled by _pool
            params.cb_eval = self._on_node
            # The whole step in one ubatch: llama.cpp pools a sequence within one ubatch only.
            params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx
            params.n_seq_max = self.n_seqs
            params.kv_unified = True
            params.n_threads = params.n_threads_batch = self._threads
            params.no_perf = True
            self.model.offload.context_params(params)
            ctx = llama.llama_init_from_model(self.model.ptr, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create an embedding context for {self.model.path}")
            self._ctx, self._batch = ctx, llama.llama_batch_init(self.n_ctx, 0, 1)
        return self._ctx, self._batch

    def _free(self) -> None:
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
        if self._ctx is not None:
            llama.llama_free(self._ctx)
        self._ctx = self._batch = None


def gguf_pooling(model: LlamaModel) -> int:
    """The pooling the GGUF names (`<arch>.pooling_type`) when it is one that gives a vector; else mean."""
    arch = meta(model, "general.architecture")
    named = meta(model, f"{arch}.pooling_type") if arch else None
    if named is not None and named.isdigit() and int(named) in _POOLINGS:
        return int(named)
    return llama.LLAMA_POOLING_TYPE_MEAN


def _pool(rows: Vector, pooling: int) -> Vector:
    """One sequence's vector from its tokens' embeddings (one row each), as llama.cpp pools them."""
    if pooling == llama.LLAMA_POOLING_TYPE_CLS:
        return np.array(rows[0], dtype=np.float32)
    if pooling == llama.LLAMA_POOLING_TYPE_LAST:
        return np.array(rows[-1], dtype=np.float32)
    return np.asarray(rows.mean(axis=0), dtype=np.float32)


def _groups(inputs: list[list[int]], n_ctx: int, n_seqs: int) -> list[list[list[int]]]:
    """Consecutive inputs packed into steps of at most n_ctx tokens and n_seqs inputs."""
    groups: list[list[list[int]]] = []
    size = 0
    for tokens in inputs:
        if not groups or len(groups[-1]) == n_seqs or size + len(tokens) > n_ctx:
            groups.append([])
            size = 0
        groups[-1].append(tokens)
        size += len(tokens)
    return groups
