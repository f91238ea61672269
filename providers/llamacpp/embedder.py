"""Embeddings from the loaded GGUF: a llama.cpp context of its own in embedding mode.

It shares the model's weights with the decode engine (loaded once) but owns its context
and the one thread that uses it, so embedding never touches the engine's caches or its
thread; `llama_decode` releases the GIL, so the event loop keeps serving meanwhile.
Inputs are packed into decode steps of up to `n_ctx` tokens and `n_seqs` inputs, each its
own sequence, pooled as the GGUF says (mean when it says nothing) and scaled to unit length.

Note: in embedding mode llama.cpp still runs the output layer for every token, which on
a large vocabulary (Gemma's 262k) costs most of the time and ~2 MB per token of batch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import llama_cpp as llama
import numpy as np

from llmservice.embedding import Vector

from .gguf_info import meta
from .model import LlamaModel

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
        for seq in range(len(group)):
            ptr = llama.llama_get_embeddings_seq(ctx, seq)
            v = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float32)
            norm = float(np.linalg.norm(v))
            vectors.append(v / norm if norm > 0 else v)
        return vectors

    def _ready(self) -> tuple[llama.llama_context_p, llama.llama_batch]:
        if self._ctx is None or self._batch is None:
            params = llama.llama_context_default_params()
            params.embeddings = True
            params.pooling_type = self.pooling
            # The whole step in one ubatch: llama.cpp pools a sequence within one ubatch only.
            params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx
            params.n_seq_max = self.n_seqs
            params.kv_unified = True
            params.n_threads = params.n_threads_batch = self._threads
            params.no_perf = True
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
