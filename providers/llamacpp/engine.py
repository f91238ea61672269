"""The in-process llama.cpp engine: one thread owns the context and runs the decode loop.

Asyncio callers hand the engine a `Job` and receive its events through the job's
`emit` callback (which must be thread-safe). Jobs wait in a (priority, arrival)
queue and run one at a time; a cancelled job stops at the next token boundary.
`llama_decode` releases the GIL, so the event loop keeps serving while it runs.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as llama
import numpy as np

from llmservice.types import FinishReason, StreamEnd, StreamEvent, TokenDelta, Usage

from .text import TextStream

log = logging.getLogger(__name__)
# llama.cpp's own log lines (model metadata dumps, notes about the GGUF) go to this logger;
# only errors show unless an operator lowers its level.
native_log = logging.getLogger("llama.cpp")
native_log.setLevel(logging.ERROR)
# ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT (continues the previous line).
_NATIVE_LEVELS = (logging.CRITICAL, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_last_native_level = logging.DEBUG


def _forward_native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    global _last_native_level
    if level < len(_NATIVE_LEVELS):
        _last_native_level = _NATIVE_LEVELS[level]
    if native_log.isEnabledFor(_last_native_level):
        native_log.log(_last_native_level, "%s", text.decode(errors="replace").rstrip())


# Replaces llama-cpp-python's forwarder, whose level table predates ggml's DEBUG level
# and so prints every warning as an error.
_native_log_callback = llama.llama_log_callback(_forward_native_log)  # kept referenced: C holds it
llama.llama_log_set(_native_log_callback, ctypes.c_void_p(0))

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
# After each llama_decode the engine thread needs the GIL back to pick the next token,
# while the event loop may be holding it for gRPC work. Python's default switch
# interval (5 ms) lets that wait cost a third of a token; 0.5 ms bounds it.
# Measured on 2 cores: StreamChat decode ratio to a bare loop 0.96 -> 0.985 (bench/).
_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None


@dataclass(eq=False)
class Job:
    """One generation: prompt tokens in, events out through `emit`."""

    prompt: list[int]
    max_tokens: int
    sampler: SamplerConfig
    emit: Callable[[StreamEvent | BaseException], None]
    stop: tuple[str, ...] = ()
    priority: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class LlamaModel:
    """A loaded GGUF: weights and vocabulary. Tokenizing is safe from any thread."""

    def __init__(self, path: Path) -> None:
        llama.llama_backend_init()
        params = llama.llama_model_default_params()
        params.n_gpu_layers = 0
        model = llama.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ValueError(f"cannot load GGUF model {path}: not a valid GGUF file llama.cpp can read")
        self.path = path
        self.ptr = model
        self.vocab = llama.llama_model_get_vocab(model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama.llama_model_n_ctx_train(model)
        self.size_bytes = llama.llama_model_size(model)
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        if self.ptr:
            llama.llama_model_free(self.ptr)
            self.ptr = None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # a longer result than the guess: -n is the size needed
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens give b""."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._render(token, special=False)
            self._pieces[token] = cached
        return cached

    def special_text(self, token: int) -> str:
        return self._render(token, special=True).decode(errors="replace")

    def _render(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_end(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    @property
    def add_bos(self) -> bool:
        return bool(llama.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos_text(self) -> str:
        return self.special_text(llama.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.special_text(llama.llama_vocab_eos(self.vocab))

    def chat_template(self) -> str | None:
        raw = llama.llama_model_chat_template(self.ptr, None)
        return raw.decode() if raw else None


class Engine:
    """Owns a llama.cpp context and the thread that decodes with it."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_batch: int, n_threads: int) -> None:
        threads = n_threads or os.cpu_count() or 1
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        ctx = llama.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens for {model.path}")
        self.model = model
        self.n_ctx = llama.llama_n_ctx(ctx)
        self.n_batch = n_batch
        self._ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        self._batch = _Batch(n_batch)
        self._queue: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self.tokens_generated = 0  # all jobs, ever: lets tests and metrics see that work stopped
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put((job.priority, next(self._arrivals), job))

    def close(self) -> None:
        """Stop the thread after the running job (cancel it first for a quick stop) and free the context."""
        self._queue.put((-(1 << 31), next(self._arrivals), None))
        self._thread.join()
        self._batch.free()
        llama.llama_free(self._ctx)

    def _loop(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            try:
                self._run(job)
            except Exception as exc:  # handed to the caller, who maps it to a status
                log.exception("generation failed")
                job.emit(exc)

    def _run(self, job: Job) -> None:
        llama.llama_memory_clear(self._memory, True)
        if not self._prefill(job):
            return
        sampler = _make_sampler(job.sampler)
        try:
            self._generate(job, sampler)
        finally:
            llama.llama_sampler_free(sampler)

    def _prefill(self, job: Job) -> bool:
        """Decode the prompt in chunks of n_batch; False if the job was cancelled meanwhile."""
        prompt = job.prompt
        for start in range(0, len(prompt), self.n_batch):
            chunk = prompt[start : start + self.n_batch]
            self._decode(chunk, start, want_logits=start + len(chunk) == len(prompt))
            if job.cancelled.is_set():
                return False
        return True

    def _generate(self, job: Job, sampler: llama.llama_sampler_p) -> None:
        text = TextStream(job.stop)
        pos, generated = len(job.prompt), 0
        reason = FinishReason.LENGTH
        while True:
            if job.cancelled.is_set():
                return  # nobody is listening: no end event
            token = llama.llama_sampler_sample(sampler, self._ctx, -1)
            if self.model.is_end(token):
                reason = FinishReason.STOP
                break
            generated += 1
            self.tokens_generated += 1
            out, stopped = text.push(self.model.piece(token))
            job.emit(TokenDelta(out, token))
            if stopped:
                reason = FinishReason.STOP
                break
            if generated >= job.max_tokens or pos + 1 >= self.n_ctx:
                break
            self._decode([token], pos, want_logits=True)
            pos += 1
        rest, stopped = text.flush()
        if rest:
            job.emit(TokenDelta(rest))
        if stopped:
            reason = FinishReason.STOP
        job.emit(StreamEnd(reason, Usage(len(job.prompt), generated)))

    def _decode(self, tokens: list[int], start: int, *, want_logits: bool) -> None:
        self._batch.fill(tokens, start, want_logits)
        rc = llama.llama_decode(self._ctx, self._batch.raw)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")


class _Batch:
    """A llama_batch for one sequence, filled through numpy views of its arrays."""

    def __init__(self, capacity: int) -> None:
        self.raw = llama.llama_batch_init(capacity, 0, 1)
        self._tokens = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self._pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self._logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))[:] = 1
        for i in range(capacity):
            self.raw.seq_id[i][0] = 0

    def fill(self, tokens: list[int], start: int, want_logits: bool) -> None:
        n = len(tokens)
        self._tokens[:n] = tokens
        self._pos[:n] = np.arange(start, start + n)
        self._logits[:n] = 0
        self._logits[n - 1] = int(want_logits)
        self.raw.n_tokens = n

    def free(self) -> None:
        llama.llama_batch_free(self.raw)


def _make_sampler(config: SamplerConfig) -> llama.llama_sampler_p:
    """A llama.cpp sampler chain in llama.cpp's own order: top_p, then temperature, then the draw."""
    chain: llama.llama_sampler_p = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    if config.temperature <= 0:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        return chain
    if config.top_p is not None and config.top_p < 1:
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(config.top_p, 1))
    llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(config.temperature))
    seed = _RANDOM_SEED if config.seed is None else config.seed % _RANDOM_SEED
    llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed))
    return chain
