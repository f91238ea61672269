"""The in-process llama.cpp engine: one thread owns the context and batches every sequence.

Each step decodes one `llama_batch` holding the next token of every generating
sequence, each row tagged with its sequence id, and every sequence samples from its
own logits row; then one chunk of a waiting prompt is decoded, so a long prompt
delays running streams by one chunk at a time. Jobs join at the next step and leave
(freeing their cache) when done or cancelled. Each sequence has its own cache
stream, prompt chunks start at fixed multiples of the chunk size and never share a
decode, so a sequence's numbers do not depend on what else runs beside it.

Priorities act at two depths. Each step only the most urgent sequences decode: the
others pause at a token boundary with their caches kept. When every cache stream is
taken and a more urgent job waits, the least urgent paused sequence is evicted: its
cache is dropped. When it is again among the most urgent, its prompt is prefilled in
the same chunks and its generated tokens are decoded again one per step, as they were
the first time: llama.cpp's numbers depend on how tokens are grouped into a decode, so
only the same grouping gives back the same cache. Then it carries on, same sampler state.

A decode step already under way does not hold up a more urgent job that arrives during
it: the job raises a flag that llama.cpp's abort callback reads before each graph node,
the step stops (llama.cpp drops the cache cells it wrote) and is decoded again, the same
rows in the same grouping, after the urgent job's prompt. So an interactive request waits
for at most one graph node of background work, not a whole step.

Asyncio callers hand the engine a `Job`; its events go out through the job's `sink`,
once per step for every job that shares the sink, so the event loop wakes once a
step rather than once a token. `llama_decode` releases the GIL, so the event loop
keeps serving meanwhile.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import llama_cpp as llama
import numpy as np

from llmservice.scheduler import aged_priority
from llmservice.types import FinishReason, SignalOptions, StreamEnd, StreamEvent, TokenDelta, Usage

from .model import LlamaModel
from .sampling import Sampler, SamplerConfig, SignalSampler
from .text import TextStream

log = logging.getLogger(__name__)

# After each llama_decode the engine thread needs the GIL back to pick the next tokens,
# while the event loop may be holding it for gRPC work. Python's default switch
# interval (5 ms) lets that wait cost a third of a token; 0.5 ms bounds it.
# Measured on 2 cores: StreamChat decode ratio to a bare loop 0.96 -> 0.98 (bench/).
_SWITCH_INTERVAL_S = 0.0005

# ggml calls the abort callback before each graph node with the pointer it was given.
# libc's strlen is that callback, in C: on a two-byte flag it returns 0 while the first
# byte is 0 and 1 once it is set, so the check costs no Python and no GIL per node.
_STRLEN = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value or 0
_ABORT_WHEN_FLAG_SET = llama.ggml_abort_callback(_STRLEN)


Event = StreamEvent | BaseException
Delivery = tuple[Callable[[Event], None], Event]


class Sink(Protocol):
    """Where the engine thread posts a step's events; `post` must be thread-safe."""

    def post(self, deliveries: list[Delivery]) -> None: ...


@dataclass(eq=False)
class Job:
    """One generation: prompt tokens in; each event goes to `deliver` by way of `sink`."""

    prompt: list[int]
    max_tokens: int
    sampler: SamplerConfig
    deliver: Callable[[Event], None]
    sink: Sink
    stop: tuple[str, ...] = ()
    priority: int = 0
    signals: SignalOptions | None = None
    arrival: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Sequence:
    """A job's state on the engine thread, from admission to its end."""

    def __init__(self, job: Job, sampler: Sampler) -> None:
        self.job = job
        self.seq_id = -1  # its cache stream; -1 while it holds none
        self.sampler = sampler
        self.text = TextStream(job.stop)
        self.sampled: list[int] = []  # every token sampled so far
        self.pending = list(job.prompt)  # the next tokens to decode: (the rest of) the prompt, or one
        self.replay: list[int] = []  # after an eviction, sampled tokens to decode again, in order
        self.pos = 0  # position of pending[0]
        self.prefilling = True  # pending holds (the rest of) the prompt
        self.generated = 0
        self.row = -1  # batch row holding this sequence's logits in the current step
        self.active = False  # decoded in the last step

    def urgency(self, now: float, aging_s: float) -> tuple[float, float]:
        """Sort key, smaller first: priority made more urgent by waiting, then arrival."""
        return (aged_priority(self.job.priority, self.job.arrival, now, aging_s), self.job.arrival)


class Engine:
    """Owns a llama.cpp context and the thread that decodes with it."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        n_slots: int = 1,
        n_cached: int = 0,
        n_seqs: int = 0,
        aging_s: float = 10.0,
    ) -> None:
        """`n_slots` sequences decode together; `n_cached` (default 2 x n_slots) keep a cache.

        Each step the most urgent sequences decode, so an interactive request preempts
        background work at a token boundary; the other cached ones are paused. `n_seqs`
        (default n_cached + n_slots) is how many jobs the engine holds at once: those
        beyond the cache streams wait, or were evicted and will be recomputed.
        """
        n_cached = max(n_cached or 2 * n_slots, n_slots)
        n_seqs = max(n_seqs or n_cached + n_slots, n_cached)
        threads = n_threads or os.cpu_count() or 1
        params = llama.llama_context_default_params()
        # Each sequence has a cache of its own, n_ctx tokens long: its attention never
        # mixes with other sequences' cells, so batching does not change its numbers.
        params.n_ctx = n_ctx * n_cached
        params.n_seq_max = n_cached
        params.kv_unified = False
        self.chunk = n_batch
        params.n_batch = params.n_ubatch = max(n_batch, n_slots)  # a prompt chunk, or every next token
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        ctx = llama.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context of {n_ctx} x {n_cached} tokens for {model.path}"
            )
        self.model = model
        self.n_ctx = llama.llama_n_ctx(ctx) // n_cached
        self.n_slots = n_slots
        self.n_cached = n_cached
        self.n_seqs = n_seqs
        self.aging_s = aging_s
        self.preemptions = 0  # times a running sequence was paused for a more urgent one
        self.evictions = 0  # times a paused sequence's cache was dropped for a more urgent one
        self.interruptions = 0  # decode steps stopped midway for a more urgent job
        self.tokens_generated = 0  # all jobs, ever: lets tests and metrics see that work stopped
        self._ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        self._urgent = ctypes.create_string_buffer(2)  # first byte set: stop the step under way
        self._step_urgency = -math.inf  # the most urgent row of the step under way
        llama.llama_set_abort_callback(ctx, _ABORT_WHEN_FLAG_SET, ctypes.cast(self._urgent, ctypes.c_void_p))
        self._batch = _Batch(max(n_batch, n_slots))
        self._signals = SignalSampler(model)
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: list[_Sequence] = []  # new, or evicted: no cache stream
        self._running: list[_Sequence] = []  # each with a cache stream
        self._outbox: dict[Sink, list[Delivery]] = {}
        self._free_ids = list(range(n_cached))  # a heap: the lowest free id goes first
        self._stopping = False
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    @property
    def held(self) -> int:
        """Jobs on the engine thread (a snapshot from any thread; for tests and metrics)."""
        return len(self._running) + len(self._waiting)

    def submit(self, job: Job) -> None:
        self._inbox.put(job)
        if job.priority < self._step_urgency:  # more urgent than all the step under way
            self._urgent[0] = b"\x01"

    def close(self) -> None:
        """Stop the thread (running jobs end without an end event) and free the context."""
        self._inbox.put(None)
        self._thread.join()
        self._batch.free()
        llama.llama_free(self._ctx)

    # The engine thread from here on.

    def _loop(self) -> None:
        while not self._stopping:
            self._urgent[0] = b"\x00"  # every job that raised it is collected next
            self._collect(block=not self._running and not self._waiting)
            self._admit()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # handed to every caller, who maps it to a status
                    log.exception("decode step failed")
                    for seq in list(self._running):
                        self._emit(seq.job, exc)
                        self._leave(seq)
            self._flush()
        for seq in self._running + self._waiting:
            self._leave(seq)

    def _emit(self, job: Job, event: Event) -> None:
        self._outbox.setdefault(job.sink, []).append((job.deliver, event))

    def _flush(self) -> None:
        """Post what this step produced: one post per sink."""
        outbox, self._outbox = self._outbox, {}
        for sink, deliveries in outbox.items():
            sink.post(deliveries)

    def _collect(self, *, block: bool) -> None:
        try:
            job = self._inbox.get(block=block)
            while True:
                if job is None:
                    self._stopping = True
                else:
                    self._accept(job)
                job = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _accept(self, job: Job) -> None:
        try:
            sampler = Sampler(self.model, job.sampler)
        except Exception as exc:
            self._emit(job, exc)
            return
        sampler.accept_prompt(job.prompt)
        self._waiting.append(_Sequence(job, sampler))

    def _admit(self) -> None:
        """Give cache streams to the most urgent waiting sequences, evicting if they outrank."""
        for seq in [s for s in self._waiting if s.job.cancelled.is_set()]:
            self._leave(seq)
        if not self._waiting:
            return
        now = time.monotonic()
        self._waiting.sort(key=lambda s: s.urgency(now, self.aging_s))
        while self._waiting:
            seq = self._waiting[0]
            if not self._free_ids:
                victim = max(self._running, key=lambda s: s.urgency(now, self.aging_s))
                if victim.urgency(now, self.aging_s) <= seq.urgency(now, self.aging_s):
                    return
                self._evict(victim)
            del self._waiting[0]
            seq.seq_id = heapq.heappop(self._free_ids)
            self._running.append(seq)

    def _evict(self, seq: _Sequence) -> None:
        """Drop a sequence's cache; it waits to be prefilled again with everything so far."""
        self._running.remove(seq)
        self._release_stream(seq)
        if seq.active:
            self.preemptions += 1
        seq.pending, seq.replay = list(seq.job.prompt), list(seq.sampled)
        seq.pos, seq.prefilling, seq.active = 0, True, False
        self._waiting.append(seq)  # behind the more urgent sequence that took its stream
        self.evictions += 1

    def _leave(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
            self._release_stream(seq)
        else:
            self._waiting.remove(seq)
        seq.sampler.close()

    def _release_stream(self, seq: _Sequence) -> None:
        llama.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
        heapq.heappush(self._free_ids, seq.seq_id)
        seq.seq_id = -1

    def _step(self) -> None:
        """One decode of every generating sequence's next token, and one prompt chunk.

        The prompt chunk goes first when its sequence is the most urgent of all, so an
        interactive request's first token does not wait for background tokens. A prompt
        chunk is decoded on its own, never beside other rows: that keeps each sequence's
        numbers the same whatever else runs (checked by the batching tests).
        """
        for seq in [s for s in self._running if s.job.cancelled.is_set()]:
            self._leave(seq)
        active = self._most_urgent()
        prefilling = next((s for s in active if s.prefilling), None)
        if prefilling is not None and prefilling is active[0]:
            self._prefill_chunk(prefilling)
            return
        if not self._decode_generating([s for s in active if not s.prefilling]):
            return  # stopped for a more urgent job: the loop collects it and steps again
        if prefilling is not None:
            self._flush()  # the tokens just sampled go out before the prompt chunk runs
            self._prefill_chunk(prefilling)

    def _decode_generating(self, generating: list[_Sequence]) -> bool:
        """Decode every generating sequence's next token; False if stopped for an urgent job."""
        if not generating:
            return True
        # Rows in ascending sequence id: llama.cpp splits a multi-stream batch into one
        # compute pass per run of consecutive ids, so with ids handed out lowest first
        # (see _admit) a step is usually a single pass.
        generating.sort(key=lambda s: s.seq_id)
        self._batch.clear()
        for seq in generating:
            seq.row = self._batch.add(seq.pending, seq.pos, seq.seq_id, logits=not seq.replay)
        if not self._decode(generating):
            return False
        for seq in generating:
            seq.pos += 1
            self._next(seq)
        return True

    def _most_urgent(self) -> list[_Sequence]:
        """The sequences that decode this step; any other that had started is paused."""
        now = time.monotonic()
        ranked = sorted(self._running, key=lambda s: s.urgency(now, self.aging_s))
        active, paused = ranked[: self.n_slots], ranked[self.n_slots :]
        for seq in paused:
            if seq.active and (seq.generated or seq.pos):  # it had started
                self.preemptions += 1
            seq.active = False
        for seq in active:
            seq.active = True
        return active

    def _prefill_chunk(self, seq: _Sequence) -> None:
        chunk = seq.pending[: self.chunk]
        last = len(chunk) == len(seq.pending)
        self._batch.clear()
        seq.row = self._batch.add(chunk, seq.pos, seq.seq_id, logits=last and not seq.replay)
        if not self._decode([seq]):
            return
        seq.pos += len(chunk)
        del seq.pending[: len(chunk)]
        if last:
            seq.prefilling = False
            self._next(seq)

    def _decode(self, rows: list[_Sequence]) -> bool:
        """Decode the batch of `rows`; False if a more urgent job stopped it (nothing changed)."""
        now = time.monotonic()
        self._step_urgency = min(s.urgency(now, self.aging_s)[0] for s in rows)
        try:
            if self._urgent[0] != b"\x00":
                return False  # raised since this step was planned: plan it again first
            rc = llama.llama_decode(self._ctx, self._batch.raw)
        finally:
            self._step_urgency = -math.inf
        if rc == 2:  # aborted: llama.cpp removed the cache cells of this batch
            self.interruptions += 1
            return False
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        return True

    def _next(self, seq: _Sequence) -> None:
        """Queue a sequence's next token: the next one to replay, or a newly sampled one."""
        if seq.replay:
            seq.pending = [seq.replay.pop(0)]
        else:
            seq.pending = []
            self._sample(seq)

    def _sample(self, seq: _Sequence) -> None:
        job = seq.job
        if job.signals is None:
            token, signal = seq.sampler.sample(self._ctx, seq.row), None
        else:
            logits = np.ctypeslib.as_array(
                llama.llama_get_logits_ith(self._ctx, seq.row), shape=(self.model.n_vocab,)
            )
            token, signal = self._signals.sample(seq.sampler, self._ctx, seq.row, logits, job.signals)
        if self.model.is_end(token):
            return self._finish(seq, FinishReason.STOP)
        seq.generated += 1
        self.tokens_generated += 1
        out, stopped = seq.text.push(self.model.piece(token))
        self._emit(job, TokenDelta(out, token, signal))
        if stopped:
            return self._finish(seq, FinishReason.STOP)
        if seq.generated >= job.max_tokens or seq.pos + 1 >= self.n_ctx:
            return self._finish(seq, FinishReason.LENGTH)
        seq.pending.append(token)
        seq.sampled.append(token)

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        rest, stopped = seq.text.flush()
        if rest:
            self._emit(seq.job, TokenDelta(rest))
        self._emit(
            seq.job,
            StreamEnd(FinishReason.STOP if stopped else reason, Usage(len(seq.job.prompt), seq.generated)),
        )
        self._leave(seq)


class _Batch:
    """A llama_batch filled through numpy views of its arrays."""

    def __init__(self, capacity: int) -> None:
        self.raw = llama.llama_batch_init(capacity, 0, 1)
        self._tokens = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self._pos = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self._logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))[:] = 1
        self._seq_ptrs = [self.raw.seq_id[i] for i in range(capacity)]
        self.size = 0

    def clear(self) -> None:
        self.size = 0
        self.raw.n_tokens = 0

    def add(self, tokens: list[int], start: int, seq_id: int, *, logits: bool) -> int:
        """Append tokens of one sequence at positions start...; return the row of the last one."""
        n, at = len(tokens), self.size
        self._tokens[at : at + n] = tokens
        self._pos[at : at + n] = np.arange(start, start + n)
        self._logits[at : at + n] = 0
        self._logits[at + n - 1] = int(logits)
        for i in range(at, at + n):
            self._seq_ptrs[i][0] = seq_id
        self.size += n
        self.raw.n_tokens = self.size
        return at + n - 1

    def free(self) -> None:
        llama.llama_batch_free(self.raw)
