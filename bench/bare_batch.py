"""The ceiling for batching on this machine: bare llama.cpp decode steps of 1 and of N rows.

No sampling beyond an argmax per row, no Python engine, no server: what llama.cpp's own
kernels give when N sequences share each decode step. Any engine built on them, the
service and llama-server alike, scales from one stream to N by at most this much.
"""

from __future__ import annotations

import time

import llama_cpp as llama
import numpy as np

from llmservice.providers.llamacpp.model import LlamaModel

PROMPT = 100
STEPS = 60


def step_rates(model: LlamaModel, threads: int, widths: tuple[int, ...]) -> dict[int, float]:
    """Tokens/s of bare decode steps, for each number of rows per step (median of 3 runs)."""
    n = max(widths)
    params = llama.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = 1024 * n, n, False  # as the engine's own context
    params.n_batch = params.n_ubatch = 256
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = llama.llama_init_from_model(model.ptr, params)
    batch = llama.llama_batch_init(256, 0, 1)
    try:
        for seq in range(n):
            _decode(batch, ctx, [(1000 + i, i, seq, i == PROMPT - 1) for i in range(PROMPT)])
        rates = {}
        for width in widths:
            runs = sorted(_tokens_per_s(batch, ctx, model.n_vocab, width) for _ in range(3))
            rates[width] = runs[1]
        return rates
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)


def _tokens_per_s(batch: llama.llama_batch, ctx: llama.llama_context_p, n_vocab: int, width: int) -> float:
    memory = llama.llama_get_memory(ctx)
    start = time.perf_counter()
    for step in range(STEPS):
        _decode(batch, ctx, [(2000 + step, PROMPT + step, seq, True) for seq in range(width)])
        for row in range(width):
            int(np.argmax(np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, row), shape=(n_vocab,))))
    elapsed = time.perf_counter() - start
    for seq in range(width):
        llama.llama_memory_seq_rm(memory, seq, PROMPT, -1)
    return width * STEPS / elapsed


Row = tuple[int, int, int, bool]  # token, position, sequence, wants logits


def _decode(batch: llama.llama_batch, ctx: llama.llama_context_p, rows: list[Row]) -> None:
    batch.n_tokens = len(rows)
    for i, (token, pos, seq, logits) in enumerate(rows):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq
    if llama.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")
