"""Prompt (prefix) caching: which cached cells a prompt may reuse and still get a cold run's bits.

llama.cpp's numbers for a token depend on the kind of decode that computed it, not on
which other prompt tokens shared that decode. Measured on its CPU backend (the vendored
build, bundled model): a prompt's cells and final logits come out bit-identical however
its tokens are cut into decodes, as long as every cut keeps each token in the same kind
of decode. The kinds are the flash-attention paths ggml picks by the decode's size:
64 tokens or more take the tiled kernel, whatever the KV length; fewer take the
row-by-row kernel, and a single token with 512 or more KV cells the split-KV kernel, both
of which also see the KV length (padded to 256). So every cell carries a `key` naming
how it was computed, and a cold run of a prompt has a key for every position (its
decodes are cut by a rule that depends on its length only, `cold_ends`: tiled
throughout, for any prompt of 64 tokens or more). A cached cell is reused only where its
token and its key are the ones a cold run would have; the decodes after the reused part
are planned to be of the cold kind too (the first may start a little earlier for that).

Tokens generated one per step sit beside other sequences' rows, so their cells get a
key no cold prompt has: they are never reused as prompt. Instead, once a reply is done
and the engine is idle, the conversation as the client will resend it is prefilled in
tiled decodes ("warming"), so that the next turn finds it.

Cached cells of a finished sequence stay in their stream until the stream is needed;
then they may go to host memory (`HostTier`), byte-budgeted, least recently used out first.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

TILE = 64  # ggml's flash-attention query tile (GGML_FA_TILE_Q): decodes this big take the tiled path
KV_PAD = 256  # llama.cpp pads the KV length a decode attends over to a multiple of this
TILED = 0  # the key of a cell computed in a decode of TILE or more tokens
GENERATED = -1  # the key of a sampled token's cell: decoded beside other sequences, never reused


def n_kv(end: int, n_ctx: int) -> int:
    """The KV length llama.cpp attends over when a stream's cells end at `end`."""
    return min(n_ctx, max(KV_PAD, -(-end // KV_PAD) * KV_PAD))


def decode_key(n_tokens: int, end: int, n_ctx: int) -> int:
    """The key of every cell of a decode of `n_tokens` ending at position `end`."""
    if n_tokens >= TILE:
        return TILED
    return 2 * (n_kv(end, n_ctx) // KV_PAD) + (1 if n_tokens == 1 else 2)


def tiled_only(n: int, chunk: int) -> bool:
    """Whether a prompt of `n` tokens is prefilled in tiled decodes only (see `cold_ends`)."""
    return n >= TILE and chunk >= 2 * TILE


def split(start: int, n: int, chunk: int) -> list[int]:
    """Ends of the fewest near-equal decodes covering [start, n), none over `chunk` tokens."""
    parts = -(-(n - start) // chunk)
    return [start + (n - start) * i // parts for i in range(1, parts + 1)]


def cold_ends(n: int, chunk: int) -> list[int]:
    """Where each decode of a prompt prefilled from empty ends.

    Near-equal decodes of at most `chunk` tokens: every one is then 64 tokens or more,
    and tiled. A decode of fewer would take the row kernel, which is much slower over a
    long context (measured: 55 tokens over 2600 cells 1.8 s, 138 tokens 0.9 s). With
    chunks under 128 tokens, or a prompt under 64, decodes end at multiples of the chunk.
    """
    if tiled_only(n, chunk):
        return split(0, n, chunk)
    return [*range(chunk, n, chunk), n]


def cold_keys(n: int, chunk: int, n_ctx: int) -> np.ndarray:
    """The key of each of a prompt's `n` positions when it is prefilled from empty."""
    keys = np.empty(n, dtype=np.int32)
    start = 0
    for end in cold_ends(n, chunk):
        keys[start:end] = decode_key(end - start, end, n_ctx)
        start = end
    return keys


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    misses = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(misses[0]) if misses.size else n


def reusable(tokens: list[int], keys: list[int], want_tokens: list[int], want_keys: np.ndarray) -> int:
    """How many leading cells of (tokens, keys) are what the wanted prompt's cold run computes."""
    n = min(len(tokens), len(want_tokens))
    if n == 0:
        return 0
    same = (np.asarray(tokens[:n]) == np.asarray(want_tokens[:n])) & (np.asarray(keys[:n]) == want_keys[:n])
    misses = np.flatnonzero(~same)
    return int(misses[0]) if misses.size else n


def prefill_ends(start: int, n: int, chunk: int, n_ctx: int) -> tuple[int, list[int]]:
    """Where prefilling a prompt of `n` tokens resumes, given `start` cells reused, and each decode's end.

    Every decode must be of the kind the cold run used for its tokens. Where the cold
    run is tiled throughout, the rest is cut into tiled decodes, starting up to 64 tokens
    early when fewer remain. Otherwise decodes end where the cold run's end, and the first
    starts earlier if it would be of another kind than the cold decode it ends.
    """
    start = min(start, n - 1)  # the last prompt token is always decoded: its logits are needed
    if tiled_only(n, chunk):
        start = min(start, n - TILE)
        return start, split(start, n, chunk)
    first_end = min((start // chunk + 1) * chunk, n)
    chunk_start = (start // chunk) * chunk
    want = decode_key(first_end - chunk_start, first_end, n_ctx)
    if decode_key(first_end - start, first_end, n_ctx) != want:
        start = max(chunk_start, first_end - (TILE if want == TILED else 2))
    return start, [*range(first_end, n, chunk), n]


def warm_ends(start: int, n: int, chunk: int) -> tuple[int, list[int]] | None:
    """The tiled decodes computing cells [start, n) as a longer prompt's cold run would; None if none can."""
    if not tiled_only(n, chunk) or start >= n:
        return None
    start = min(start, n - TILE)
    return start, split(start, n, chunk)


@dataclass(eq=False)
class Cells:
    """What a cache stream holds: its cells' tokens and keys, for whom, and the prompt's last logits."""

    partition: str
    tokens: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    # (prompt length, logits of its last token): an exact repeat of that prompt decodes nothing.
    logits: tuple[int, np.ndarray] | None = None

    def add(self, tokens: list[int], key: int) -> None:
        self.tokens += tokens
        self.keys += [key] * len(tokens)

    def trim(self, n: int) -> None:
        del self.tokens[n:], self.keys[n:]
        if self.logits is not None and self.logits[0] > n:
            self.logits = None

    def match(self, prompt: list[int], keys: np.ndarray, partition: str) -> int:
        """Cells reusable for `prompt` (cold keys `keys`); all of it only if its last logits are kept."""
        if partition != self.partition:
            return 0
        n = reusable(self.tokens, self.keys, prompt, keys)
        if n == len(prompt) and (self.logits is None or self.logits[0] != n):
            return n - 1  # no logits for its last token: that one is decoded again
        return n


@dataclass(eq=False)
class Saved:
    """A cache stream's state in host memory (llama_state_seq_get_data), with its cells' description."""

    cells: Cells
    state: ctypes.Array[ctypes.c_uint8]  # as llama_state_seq_get_data wrote it

    @property
    def nbytes(self) -> int:
        logits = self.cells.logits[1].nbytes if self.cells.logits is not None else 0
        return len(self.state) + logits + 8 * len(self.cells.tokens)


class HostTier:
    """Saved caches up to `budget` bytes, least recently used dropped first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.evictions = 0  # saved caches dropped to stay within the budget
        self._saved: OrderedDict[int, Saved] = OrderedDict()

    def __len__(self) -> int:
        return len(self._saved)

    def fits(self, nbytes: int) -> bool:
        return 0 < nbytes <= self.budget

    def put(self, saved: Saved) -> None:
        if not self.fits(saved.nbytes):
            return
        while self._saved and self.bytes + saved.nbytes > self.budget:
            _, dropped = self._saved.popitem(last=False)
            self.bytes -= dropped.nbytes
            self.evictions += 1
        self._saved[id(saved)] = saved
        self.bytes += saved.nbytes

    def best(self, prompt: list[int], keys: np.ndarray, partition: str) -> tuple[int, Saved | None]:
        """The saved cache with the most cells reusable for `prompt`, and how many."""
        found: tuple[int, Saved | None] = (0, None)
        for saved in self._saved.values():
            n = saved.cells.match(prompt, keys, partition)
            if n > found[0]:
                found = (n, saved)
        return found

    def take(self, saved: Saved) -> None:
        """Out of the tier: it is being restored into a stream, where it will be kept again."""
        del self._saved[id(saved)]
        self.bytes -= saved.nbytes
