"""Signal math against an independent float64 numpy computation on the same logits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from llmservice.kernel.signals import Workspace, distribution, probabilities, top_indices


def reference(x: np.ndarray) -> tuple[np.ndarray, float]:
    x64 = x.astype(np.float64)
    p = np.exp(x64 - x64.max())
    p /= p.sum()
    nz = p[p > 0]
    return p, float(-(nz * np.log2(nz)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_and_probabilities_match_a_float64_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(262_144) * 4).astype(np.float32)
    p_ref, h_ref = reference(x)
    work = Workspace(x.shape[0])
    dist = distribution(x, work)
    assert dist.entropy == pytest.approx(h_ref, rel=1e-5)
    assert 0 <= dist.entropy <= math.log2(x.shape[0])
    p = probabilities(x, dist)
    assert float(p.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-4)
    chosen = int(rng.integers(0, x.shape[0]))
    assert dist.prob(x[chosen]) == pytest.approx(p_ref[chosen], rel=1e-5)


def test_top_indices_are_the_largest_sorted() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50_000).astype(np.float32)
    top = top_indices(x, 10)
    assert list(top) == list(np.argsort(-x, kind="stable")[:10])
    assert all(x[a] >= x[b] for a, b in itertools.pairwise(top))


def test_top_indices_handle_flat_and_tiny_inputs() -> None:
    assert list(top_indices(np.zeros(5, dtype=np.float32), 3)) == [0, 1, 2]
    assert list(top_indices(np.array([1.0, 3.0], dtype=np.float32), 10)) == [1, 0]
    spread = np.array([0.0, -1e9, 5.0, -3e7], dtype=np.float32)
    assert list(top_indices(spread, 4)) == [2, 0, 3, 1]


def test_a_certain_distribution_has_zero_entropy() -> None:
    x = np.full(1000, -np.inf, dtype=np.float32)
    x[7] = 2.0
    dist = distribution(x)
    assert dist.entropy == 0.0
    assert dist.prob(x[7]) == pytest.approx(1.0)


def test_masked_entries_are_left_out() -> None:
    x = np.array([1.0, -np.inf, 1.0, -np.inf], dtype=np.float32)
    dist = distribution(x)
    assert dist.entropy == pytest.approx(1.0)  # two equal survivors: one bit
    assert dist.prob(1.0) == pytest.approx(0.5)


def test_uniform_distribution_has_maximal_entropy() -> None:
    x = np.zeros(1024, dtype=np.float32)
    assert distribution(x).entropy == pytest.approx(10.0)
