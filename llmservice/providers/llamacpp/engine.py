"""The in-process llama.cpp engine: one thread owns the context and batches every sequence.

Each step decodes one `llama_batch` holding the next token of every generating
sequence, each row tagged with its sequence id, and every sequence samples from its
own logits row; then one chunk of a waiting prompt is decoded, so a long prompt
delays running streams by one chunk at a time. Jobs join at the next step and leave
(freeing their cache) when done or cancelled. Each sequence has its own cache
stream, a prompt's decodes are cut by a rule that depends on its length only (see
prefix_cache.cold_ends) and never share a decode with other rows, so a sequence's
numbers do not depend on what else runs beside it.

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

A finished sequence's cache stays in its stream, and a new job reuses the longest prefix
of its prompt that any stream (running, paused or finished), or the host-memory tier,
holds for the same partition, computing only the rest, with the bits a cold run gives:
see prefix_cache.py for which cells qualify. Running and paused work always wins a
stream over a finished cache, which moves to the host tier or is dropped.

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
from typing import Protocol, cast

import llama_cpp as llama
import numpy as np

from llmservice.kernel.scheduler import aged_priority
from llmservice.kernel.types import FinishReason, SignalOptions, StreamEnd, StreamEvent, TokenDelta, Usage
from llmservice.providers.llamacpp.model import LlamaModel
from llmservice.providers.llamacpp.prefix_cache import (
    GENERATED,
    KV_PAD,
    TILED,
    Cells,
    HostTier,
    Saved,
    cold_keys,
    common_prefix,
    decode_key,
    prefill_ends,
    reusable,
    warm_ends,
)
from llmservice.providers.llamacpp.sampling import Sampler, SamplerConfig, SignalSampler
from llmservice.providers.llamacpp.text import TextStream

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

# A cached prefix shorter than this is not worth copying between streams or restoring
# from host memory (both move a whole stream's worth of cells); it is computed instead.
MIN_COPY_TOKENS = 32


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
    partition: str = ""  # caches are reused only between jobs of the same partition
    arrival: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Set while its reader is behind (what it was sent is still unread): it is paused, as
    # a preempted sequence is, so a client that stops reading costs a bounded backlog, not
    # its whole stream; the reader clears it, and wakes the engine, as it catches up.
    reader_behind: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(frozen=True, slots=True)
class _Warm:
    """Tokens to prefill while idle, so that a request starting with them finds them cached."""

    tokens: list[int]
    partition: str


class _Sequence:
    """A job's state on the engine thread, from admission to its end."""

    def __init__(self, job: Job, sampler: Sampler, wanted: np.ndarray) -> None:
        self.job = job
        self.seq_id = -1  # its cache stream; -1 while it holds none
        self.sampler = sampler
        self.wanted = wanted  # each prompt position's key in a cold run
        self.cells = Cells(job.partition)  # what its stream holds
        self.ends: list[int] = []  # where each prompt decode still to come ends
        self.reused = 0  # prompt tokens served from cache
        self.started = False  # given a stream once
        self.ready: np.ndarray | None = None  # its prompt's last logits, kept from an earlier run
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
        batch_invariant: bool = True,
        prompt_cache: bool = True,
        host_cache_bytes: int = 0,
    ) -> None:
        """`n_slots` sequences decode together; `n_cached` (default 2 x n_slots) keep a cache.

        Each step the most urgent sequences decode, so an interactive request preempts
        background work at a token boundary; the other cached ones are paused. `n_seqs`
        (default n_cached + n_slots) is how many jobs the engine holds at once: those
        beyond the cache streams wait, or were evicted and will be recomputed.
        `batch_invariant` keeps a sequence's numbers the same alone or batched (see
        `_companions`). `prompt_cache` keeps finished caches for reuse; `host_cache_bytes` of host memory
        take those that must leave the context.
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
        model.offload.context_params(params)
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
        self.batch_invariant = batch_invariant
        self.prompt_cache = prompt_cache
        self.prompt_tokens_computed = 0  # prompt tokens decoded for jobs (warming not counted)
        self.prompt_tokens_reused = 0  # prompt tokens served from cache
        self.cache_hits = 0  # jobs that reused a cached prefix
        self.cache_misses = 0  # jobs that reused nothing
        self.cache_evictions = 0  # finished caches that left the context (to host memory or gone)
        self.warm_tokens_computed = 0  # tokens prefilled while idle for a next turn
        self.host = HostTier(host_cache_bytes)
        self._ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        self._urgent = ctypes.create_string_buffer(2)  # first byte set: stop the step under way
        self._step_urgency = -math.inf  # the most urgent row of the step under way
        llama.llama_set_abort_callback(ctx, _ABORT_WHEN_FLAG_SET, ctypes.cast(self._urgent, ctypes.c_void_p))
        self._batch = _Batch(max(n_batch, n_slots))
        self._signals = SignalSampler(model)
        self._inbox: queue.SimpleQueue[Job | _Warm | None] = queue.SimpleQueue()
        self._waiting: list[_Sequence] = []  # new, or evicted: no cache stream
        self._running: list[_Sequence] = []  # each with a cache stream
        self._outbox: dict[Sink, list[Delivery]] = {}
        self._free_ids = list(range(n_cached))  # a heap: the lowest free id goes first
        self._kept: dict[int, Cells] = {}  # finished caches by stream, least recently used first
        self._warm: list[_Warm] = []  # to prefill while idle, newest last
        self._warming: _Sequence | None = None  # the one being prefilled
        self._warm_sent = self._warm_taken = 0  # for `warming`, from other threads
        # Streams copied from since the last decode: llama.cpp copies at the next decode,
        # so until then nothing may be written into them.
        self._copied_from: set[int] = set()
        self._stopping = False
        sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    @property
    def _to_spill(self) -> bool:
        """Idle with every stream kept: move the oldest to host memory now, so that the next
        request finds a free stream instead of waiting for the move."""
        return not self._free_ids and bool(self._kept) and self.host.budget > 0

    @property
    def warming(self) -> bool:
        """Prefilling for a next turn, or about to (a snapshot, for tests)."""
        return self._warm_sent > self._warm_taken or bool(self._warm) or self._warming is not None

    @property
    def held(self) -> int:
        """Jobs on the engine thread (a snapshot from any thread; for tests and metrics)."""
        return len(self._running) + len(self._waiting)

    def submit(self, job: Job) -> None:
        self._inbox.put(job)
        if job.priority < self._step_urgency:  # more urgent than all the step under way
            self._urgent[0] = b"\x01"

    def wake(self) -> None:
        """Have the engine look at its jobs again (one's reader caught up, or it was cancelled)."""
        self._inbox.put(_WAKE)

    def warm(self, tokens: list[int], partition: str) -> None:
        """Prefill `tokens` when idle (a conversation as its next turn will resend it)."""
        if self.prompt_cache and tokens:
            self._warm_sent += 1
            self._inbox.put(_Warm(tokens, partition))

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
            # Nothing to decode: no jobs, or every one waits for its reader (the reader wakes us).
            stalled = not self._waiting and all(s.job.reader_behind.is_set() for s in self._running)
            self._collect(block=stalled and not self._warm and self._warming is None and not self._to_spill)
            if self._running or self._waiting:
                self._stop_warming()
            self._admit()
            try:
                if self._running:
                    self._step()
                elif self._warm or self._warming is not None:
                    self._warm_step()
                elif self._to_spill:
                    heapq.heappush(self._free_ids, self._take_stream())
            except Exception as exc:  # handed to every caller, who maps it to a status
                log.exception("decode step failed")
                for seq in list(self._running):
                    self._emit(seq.job, exc)
                    self._leave(seq, keep=False)
                if self._warming is not None:
                    self._release_stream(self._warming)
                    self._warming = None
            self._flush()
        for seq in self._running + self._waiting:
            self._leave(seq, keep=False)

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
                elif job is _WAKE:
                    pass
                elif isinstance(job, _Warm):
                    self._warm = [*self._warm, job][-self.n_cached :]
                    self._warm_taken += 1
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
        self._waiting.append(_Sequence(job, sampler, cold_keys(len(job.prompt), self.chunk, self.n_ctx)))

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
            if not self._free_ids and not self._kept:
                victim = max(self._running, key=lambda s: s.urgency(now, self.aging_s))
                if victim.urgency(now, self.aging_s) <= seq.urgency(now, self.aging_s):
                    return
                self._evict(victim)
            del self._waiting[0]
            try:
                self._start(seq)
            except Exception as exc:  # the caller gets it; the engine carries on
                log.exception("starting a sequence failed")
                if seq.seq_id >= 0:
                    self._release_stream(seq)
                seq.sampler.close()
                self._emit(seq.job, exc)
                continue
            self._running.append(seq)

    def _start(self, seq: _Sequence) -> None:
        """Give a sequence a stream holding the longest reusable prefix of its prompt, and plan the rest."""
        prompt, part = seq.job.prompt, seq.job.partition
        # Cells reusable, and where they are: a kept stream, a running sequence, or saved.
        n, source = 0, cast("int | _Sequence | Saved | None", None)
        if self.prompt_cache:
            # Kept ones first: on a tie, taking one over costs no copy.
            candidates: list[tuple[Cells, int | _Sequence]] = [(c, i) for i, c in self._kept.items()]
            candidates += [(s.cells, s) for s in self._running]
            for cells, where in candidates:
                found = cells.match(prompt, seq.wanted, part)
                if found > n:
                    n, source = found, where
            saved_n, saved = self.host.best(prompt, seq.wanted, part)
            if saved_n > n:
                n, source = saved_n, saved
        if seq.replay:  # evicted: its prompt's logits are not wanted, its replayed tokens are
            n = min(n, len(prompt) - 1)
        if isinstance(source, int) and (2 * n >= len(self._kept[source].tokens) or not self._free_ids):
            seq.seq_id, cells = source, self._kept.pop(source)  # carries the cache on: take it over
        else:
            seq.seq_id, cells = self._take_stream(), Cells(part)
            if source is None or n < MIN_COPY_TOKENS:
                n = 0
            elif isinstance(source, Saved) and seq.seq_id not in self._copied_from:
                self.host.take(source)
                if llama.llama_state_seq_set_data(self._ctx, source.state, len(source.state), seq.seq_id):
                    cells = source.cells
                else:
                    log.warning("a saved prompt cache could not be restored; computing it again")
                    n = 0
            elif isinstance(source, Saved):
                n = 0
            else:
                src = source if isinstance(source, int) else source.seq_id
                llama.llama_memory_seq_cp(self._memory, src, seq.seq_id, -1, -1)  # the whole stream
                self._copied_from.add(src)
                cells = self._kept[source] if isinstance(source, int) else source.cells
                cells = Cells(part, list(cells.tokens), list(cells.keys), cells.logits)
        if n == len(prompt):  # an exact repeat: its first token comes from the kept logits
            assert cells.logits is not None
            start, seq.ends, seq.ready = n, [], cells.logits[1]
            seq.pending, seq.prefilling = [], False
        else:
            start, seq.ends = prefill_ends(n, len(prompt), self.chunk, self.n_ctx)
            seq.pending = prompt[start:]
        llama.llama_memory_seq_rm(self._memory, seq.seq_id, start, -1)
        cells.trim(start)
        seq.cells, seq.pos = cells, start
        if not seq.started:  # not a resumption after an eviction
            seq.started, seq.reused = True, start
            self.prompt_tokens_reused += start
            if start:
                self.cache_hits += 1
            else:
                self.cache_misses += 1

    def _take_stream(self) -> int:
        """A free stream, else the least recently used finished cache's (saved to host memory first)."""
        if self._free_ids:
            return heapq.heappop(self._free_ids)
        seq_id = next(iter(self._kept))
        cells = self._kept.pop(seq_id)
        if self.host.budget:
            size = llama.llama_state_seq_get_size(self._ctx, seq_id)
            if self.host.fits(size):
                state = (ctypes.c_uint8 * size)()
                if llama.llama_state_seq_get_data(self._ctx, state, size, seq_id) == size:
                    self.host.put(Saved(cells, state))
        llama.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        self.cache_evictions += 1
        return seq_id

    def _keep(self, seq_id: int, cells: Cells) -> None:
        """A finished sequence's stream stays as it is, for a later prompt that starts the same."""
        self._kept[seq_id] = cells

    def _stop_warming(self) -> None:
        """Real work arrived: what was warmed so far is kept, the rest waits for the next idle time."""
        if self._warming is not None:
            cells = self._warming.cells
            if cells.logits is not None and cells.logits[0] > len(cells.tokens):
                cells.logits = None  # stopped before it recomputed the prompt's end
            self._keep(self._warming.seq_id, cells)
            self._warming = None

    def _warm_step(self) -> None:
        """One tiled decode of the newest warming job (see prefix_cache.py)."""
        seq = self._warming
        if seq is None:
            # The job leaves _warm only once it is _warming (or found to need nothing), so
            # `warming` never reads False in between.
            seq = self._warming = self._start_warming(self._warm[-1])
            self._warm.pop()
            if seq is None:
                return
        end = seq.ends[0]
        chunk = seq.pending[: end - seq.pos]
        self._batch.clear()
        self._batch.add(chunk, seq.pos, seq.seq_id, logits=False)
        if not self._decode([seq], urgency=math.inf):
            return
        seq.cells.add(chunk, TILED)
        self.warm_tokens_computed += len(chunk)
        seq.pos = end
        del seq.pending[: len(chunk)], seq.ends[0]
        if not seq.ends:
            self._stop_warming()

    def _start_warming(self, warm: _Warm) -> _Sequence | None:
        """Warming takes over the finished cache it continues; None when there is nothing to warm."""
        wanted = np.full(len(warm.tokens), TILED, dtype=np.int32)
        # The stream it continues: the one sharing the most tokens, most of its own.
        shared, seq_id = max(
            (
                (common_prefix(c.tokens, warm.tokens), i)
                for i, c in self._kept.items()
                if c.partition == warm.partition
            ),
            default=(0, -1),
        )
        if seq_id < 0 or 2 * shared < len(self._kept[seq_id].tokens):
            return None
        cells = self._kept[seq_id]
        n = reusable(cells.tokens, cells.keys, warm.tokens, wanted)
        plan = warm_ends(n, len(warm.tokens), self.chunk) if n < len(warm.tokens) else None
        if plan is None:
            return None
        start, ends = plan
        del self._kept[seq_id]
        # Cells recomputed in tiled decodes, as they were computed, come out the same bits
        # again: the prompt's last logits stay good.
        logits = cells.logits
        tiled = logits is not None and all(k == TILED for k in cells.keys[start : logits[0]])
        cells.trim(start)
        if tiled:
            cells.logits = logits
        job = Job(warm.tokens, 0, SamplerConfig(), lambda _: None, _NO_SINK, partition=warm.partition)
        seq = _Sequence(job, None, wanted)  # type: ignore[arg-type]  # it samples nothing
        seq.seq_id, seq.cells = seq_id, cells
        llama.llama_memory_seq_rm(self._memory, seq_id, start, -1)
        seq.pos, seq.pending, seq.ends = start, warm.tokens[start:], ends
        return seq

    def _evict(self, seq: _Sequence) -> None:
        """Drop a sequence's cache; it waits to be prefilled again with everything so far."""
        self._running.remove(seq)
        self._release_stream(seq)
        if seq.active:
            self.preemptions += 1
        seq.cells, seq.ready = Cells(seq.job.partition), None
        seq.pending, seq.replay = list(seq.job.prompt), list(seq.sampled)
        seq.pos, seq.prefilling, seq.active = 0, True, False
        self._waiting.append(seq)  # behind the more urgent sequence that took its stream
        self.evictions += 1

    def _leave(self, seq: _Sequence, *, keep: bool = True) -> None:
        """Done, cancelled or failed; a finished or cancelled one's cache is kept for reuse."""
        if seq in self._running:
            self._running.remove(seq)
            if keep and self.prompt_cache and seq.cells.tokens:
                self._keep(seq.seq_id, seq.cells)
                seq.seq_id = -1
            else:
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
        ready = [s for s in active if s.ready is not None]
        for seq in ready:  # an exact repeat: its first token needs no decode
            logits, seq.ready = seq.ready, None
            self._sample(seq, logits)
        if ready:
            self._flush()  # out now, not after the next decode
            active = [s for s in active if s in self._running]  # some finished at their first token
        if not active:
            return
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
        companions = self._companions(generating)
        rows: list[_Sequence | tuple[int, int]] = [*generating, *companions]
        rows.sort(key=lambda r: r.seq_id if isinstance(r, _Sequence) else r[0])
        self._batch.clear()
        for row in rows:
            if isinstance(row, _Sequence):
                row.row = self._batch.add(row.pending, row.pos, row.seq_id, logits=not row.replay)
            else:
                self._batch.add([0], row[1], row[0], logits=False)
        decoded = self._decode(generating)
        for seq_id, pos in companions:
            llama.llama_memory_seq_rm(self._memory, seq_id, pos, -1)
        if not decoded:
            return False
        for seq in generating:
            seq.cells.add(seq.pending, GENERATED)
            seq.pos += 1
            self._next(seq)
        return True

    def _companions(self, generating: list[_Sequence]) -> list[tuple[int, int]]:
        """A placeholder row (stream, position) beside each sequence that would decode alone.

        llama.cpp decodes each run of consecutive stream ids together, and a run of one
        stream with 512 or more KV cells (past position 256) takes another attention
        kernel (split-KV) than a run of several: its numbers would change with what runs
        beside it. This costs such a sequence's decode about 30% when it runs alone
        (43 -> 57 ms a token at 2600 cells, bundled model, 2 threads). A row in a
        neighbouring stream, at that stream's next position and removed right after,
        keeps every sequence in a run of two or more, so its numbers are the same alone
        or batched. Neighbours that join two runs are preferred by going in id order.
        """
        if self.n_cached < 2 or not self.batch_invariant:
            return []  # one stream: every sequence always decodes alone
        long = [s.seq_id for s in generating if s.pos >= KV_PAD]  # the others never take split-KV
        if not long:
            return []
        taken, added = {s.seq_id for s in generating}, []
        next_pos = {s.seq_id: s.pos for s in self._running} | {
            i: len(c.tokens) for i, c in self._kept.items()
        }
        for seq_id in long:
            if seq_id - 1 in taken or seq_id + 1 in taken:
                continue  # in a run already
            for neighbour in (seq_id + 1, seq_id - 1):
                pos = next_pos.get(neighbour, 0)
                if 0 <= neighbour < self.n_cached and neighbour not in taken and pos < self.n_ctx:
                    taken.add(neighbour)
                    added.append((neighbour, pos))
                    break
        return added

    def _most_urgent(self) -> list[_Sequence]:
        """The sequences that decode this step; any other that had started is paused."""
        now = time.monotonic()
        behind = [s for s in self._running if s.job.reader_behind.is_set()]
        for seq in behind:  # paused until its reader catches up; its cache stays
            seq.active = False
        ready = [s for s in self._running if not s.job.reader_behind.is_set()]
        ranked = sorted(ready, key=lambda s: s.urgency(now, self.aging_s))
        active, paused = ranked[: self.n_slots], ranked[self.n_slots :]
        for seq in paused:
            if seq.active and (seq.generated or seq.pos):  # it had started
                self.preemptions += 1
            seq.active = False
        for seq in active:
            seq.active = True
        return active

    def _prefill_chunk(self, seq: _Sequence) -> None:
        """Decode the prompt up to the next planned end (see prefix_cache.prefill_ends)."""
        end = seq.ends[0]
        chunk = seq.pending[: end - seq.pos]
        last = len(chunk) == len(seq.pending)
        logits = last and not seq.replay
        self._batch.clear()
        seq.row = self._batch.add(chunk, seq.pos, seq.seq_id, logits=logits)
        if not self._decode([seq]):
            return
        seq.cells.add(chunk, decode_key(len(chunk), end, self.n_ctx))
        if logits:
            row = llama.llama_get_logits_ith(self._ctx, seq.row)
            seq.cells.logits = (end, np.ctypeslib.as_array(row, shape=(self.model.n_vocab,)).copy())
        self.prompt_tokens_computed += len(chunk)
        seq.pos = end
        del seq.pending[: len(chunk)], seq.ends[0]
        if last:
            seq.prefilling = False
            self._next(seq)

    def _decode(self, rows: list[_Sequence], urgency: float | None = None) -> bool:
        """Decode the batch of `rows`; False if a more urgent job stopped it (nothing changed).

        Any job stops a step of `urgency` inf (warming).
        """
        now = time.monotonic()
        if urgency is None:
            urgency = min(s.urgency(now, self.aging_s)[0] for s in rows)
        self._step_urgency = urgency
        try:
            if self._urgent[0] != b"\x00":
                return False  # raised since this step was planned: plan it again first
            self._copied_from.clear()  # the decode makes every pending copy first
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

    def _sample(self, seq: _Sequence, kept: np.ndarray | None = None) -> None:
        """Sample from the sequence's logits row, or from `kept` logits of an earlier run."""
        job = seq.job
        if job.signals is None:
            sampler, signal = seq.sampler, None
            token = sampler.sample(self._ctx, seq.row) if kept is None else sampler.sample_logits(kept)
        elif kept is not None:
            token, signal = self._signals.sample(seq.sampler, None, -1, kept, job.signals)
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
            StreamEnd(
                FinishReason.STOP if stopped else reason,
                Usage(len(seq.job.prompt), seq.generated, cached_tokens=seq.reused),
            ),
        )
        self._leave(seq)


class _NoSink:
    def post(self, deliveries: list[Delivery]) -> None:
        pass


_NO_SINK = _NoSink()
_WAKE = _Warm([], "")  # in the inbox: nothing to do but look at the jobs again


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
