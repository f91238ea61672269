"""The rules that decide which cached cells a prompt may reuse, and the host tier's budget."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from llmservice.providers.llamacpp.prefix_cache import (
    GENERATED,
    TILE,
    TILED,
    Cells,
    HostTier,
    Saved,
    cold_ends,
    cold_keys,
    common_prefix,
    decode_key,
    prefill_ends,
    reusable,
    warm_ends,
)

pytestmark = pytest.mark.unit

CHUNK, N_CTX = 256, 4096


def test_decode_keys_follow_the_attention_kernels() -> None:
    assert decode_key(64, 64, N_CTX) == decode_key(256, 300, N_CTX) == TILED  # tiled, any KV length
    assert decode_key(2, 100, N_CTX) == decode_key(63, 256, N_CTX)  # row kernel, same KV length
    assert decode_key(2, 100, N_CTX) != decode_key(2, 300, N_CTX)  # ... not at another
    assert decode_key(1, 300, N_CTX) != decode_key(2, 300, N_CTX)  # one token: split-KV
    assert GENERATED not in {decode_key(n, e, N_CTX) for n in (1, 2, 64) for e in (1, 300, 5000)}


def test_a_cold_prompt_is_cut_into_tiled_decodes_only() -> None:
    assert cold_ends(300, CHUNK) == [150, 300]  # not 256 + 44: a 44-token decode is the slow kind
    assert cold_ends(600, CHUNK) == [200, 400, 600]
    assert cold_ends(100, CHUNK) == [100]
    assert (cold_keys(300, CHUNK, N_CTX) == TILED).all()
    assert cold_ends(40, CHUNK) == [40]  # too short to be tiled: one decode
    assert (cold_keys(40, CHUNK, N_CTX) == decode_key(40, 40, N_CTX)).all()
    assert cold_ends(300, 100) == [100, 200, 300]  # small chunks: at multiples of the chunk


def test_reuse_stops_at_the_first_token_or_key_that_differs() -> None:
    prompt = list(range(300))
    want = cold_keys(300, CHUNK, N_CTX)
    assert reusable(prompt, list(want), prompt, want) == 300
    assert reusable([*prompt[:100], -5], list(want[:101]), prompt, want) == 100
    short = cold_keys(40, CHUNK, N_CTX)  # a 40-token prompt's cells: not tiled
    assert reusable(prompt[:40], list(short), prompt, want) == 0
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        (0, 300, (0, [150, 300])),  # cold
        (256, 300, (236, [300])),  # 44 tokens left: start 64 before the end, to stay tiled
        (100, 300, (100, [300])),  # 200 tokens: one tiled decode
        (10, 600, (10, [206, 403, 600])),
        (300, 300, (236, [300])),  # nothing left but the last token, whose logits are needed
        (20, 40, (20, [40])),  # a short prompt's one decode: the row kernel, at the same KV length
        (30, 300, (30, [165, 300])),
    ],
)
def test_prefill_resumes_with_decodes_of_the_cold_kind(
    start: int, n: int, expected: tuple[int, list[int]]
) -> None:
    assert prefill_ends(start, n, CHUNK, N_CTX) == expected
    begin, ends = expected
    cold = cold_keys(n, CHUNK, N_CTX)
    for a, b in itertools.pairwise([begin, *ends]):  # every decode is of the kind the cold run used
        assert (cold[a:b] == decode_key(b - a, b, N_CTX)).all()


@pytest.mark.parametrize(("start", "n"), [(230, 600), (290, 300), (255, 257)])
def test_with_small_chunks_prefill_follows_the_cold_chunks(start: int, n: int) -> None:
    chunk = 100
    begin, ends = prefill_ends(start, n, chunk, N_CTX)
    assert begin <= start
    assert ends[-1] == n
    cold = cold_keys(n, chunk, N_CTX)
    for a, b in itertools.pairwise([begin, *ends]):
        assert (cold[a:b] == decode_key(b - a, b, N_CTX)).all()


def test_warming_plans_only_tiled_decodes_within_a_chunk() -> None:
    for start, n in [(0, 64), (100, 130), (250, 600), (300, 513), (0, 1000)]:
        plan = warm_ends(start, n, CHUNK)
        assert plan is not None
        begin, ends = plan
        sizes = np.diff([begin, *ends])
        assert begin <= start
        assert ends[-1] == n
        assert (sizes >= TILE).all()
        assert (sizes <= CHUNK).all()
    assert warm_ends(0, 63, CHUNK) is None  # too short for a tiled decode
    assert warm_ends(0, 500, 100) is None  # chunks too small to cut every decode tiled


def test_kept_logits_serve_only_an_exact_repeat() -> None:
    prompt = list(range(50))
    want = cold_keys(50, CHUNK, N_CTX)
    cells = Cells("p", list(prompt), list(want), logits=(50, np.zeros(8, dtype=np.float32)))
    assert cells.match(prompt, want, "p") == 50
    assert cells.match(prompt, want, "q") == 0  # another partition
    longer = [*prompt, *range(100, 130)]  # 80 tokens: tiled, unlike the 50 cached
    assert cells.match(longer, cold_keys(80, CHUNK, N_CTX), "p") == 0
    cells.trim(20)
    assert cells.logits is None
    assert cells.match(prompt, want, "p") == 20


def test_the_host_tier_stays_within_its_budget_dropping_the_oldest() -> None:
    tier = HostTier(budget=10_000)

    def saved(first: int) -> Saved:
        tokens = list(range(first, first + 100))
        return Saved(Cells("p", tokens, [TILED] * 100), (ctypes.c_uint8 * 2500)())

    caches = [saved(i * 1000) for i in range(5)]
    for cache in caches:
        tier.put(cache)
        assert tier.bytes <= tier.budget
    assert tier.evictions == 2
    assert len(tier) == 3
    want = np.full(100, TILED, dtype=np.int32)
    assert tier.best(caches[0].cells.tokens, want, "p") == (0, None)  # the oldest went first
    assert tier.best(caches[4].cells.tokens, want, "p") == (99, caches[4])  # no logits: the last again
    tier.take(caches[4])
    assert len(tier) == 2
    assert tier.bytes == 2 * caches[0].nbytes
    tier.put(Saved(Cells("p"), (ctypes.c_uint8 * 20_000)()))  # bigger than the whole budget: not kept
    assert len(tier) == 2
