"""Per-token signals from logits: pure functions over numpy arrays (docs/ARCHITECTURE.md, Signals).

For a vocabulary of V logits x, with m = max(x), e = exp(x - m) and Z = sum(e):
p = e / Z, and the entropy in bits is H = (ln Z - sum(p * (x - m))) / ln 2, so one
exp pass and two reductions give both. Top-k needs no full sort: the candidates
within a widening margin of the maximum are gathered, then only those are sorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]

_LN2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of softmax(x) over the candidates given."""

    log_z: float  # ln of the partition function, relative to `peak`
    peak: float  # max(x)
    entropy: float  # bits

    def prob(self, logit: float) -> float:
        return math.exp(float(logit) - self.peak - self.log_z)


class Workspace:
    """Scratch buffers for one vocabulary size, reused token after token (not thread-safe)."""

    def __init__(self, size: int) -> None:
        self.shifted = np.empty(size, dtype=np.float32)
        self.exp = np.empty(size, dtype=np.float32)


def distribution(x: Floats, work: Workspace | None = None) -> Distribution:
    """Softmax summary of logits `x`; -inf logits (masked by a grammar) count as absent."""
    n = x.shape[0]
    if work is None or work.exp.shape[0] < n:
        work = Workspace(n)
    shifted, e = work.shifted[:n], work.exp[:n]
    peak = float(x.max())
    if not math.isfinite(peak):  # every candidate masked: nothing can be chosen
        return Distribution(0.0, peak, 0.0)
    np.subtract(x, peak, out=shifted)
    np.exp(shifted, out=e)
    z = float(e.sum())  # float32 pairwise summation: error ~ log2(n) ulp
    with np.errstate(invalid="ignore"):
        weighted = float(np.dot(e, shifted))
    if not math.isfinite(weighted):  # 0 * -inf from masked entries: leave them out
        kept = e > 0
        weighted = float(np.dot(e[kept], shifted[kept]))
    entropy = max((math.log(z) - weighted / z) / _LN2, 0.0)
    return Distribution(math.log(z), peak, entropy)


def top_indices(x: Floats, k: int) -> Ints:
    """Indices of the k largest logits, largest first (ties: lower index first)."""
    k = min(k, x.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    peak = float(x.max())
    margin = 1.0
    while True:
        candidates = np.flatnonzero(x >= peak - margin)
        if candidates.shape[0] >= k or not math.isfinite(margin):
            break
        margin = margin * 4 if margin < 1e6 else math.inf
    order = np.argsort(-x[candidates], kind="stable")[:k]
    return candidates[order]


def probabilities(x: Floats, dist: Distribution) -> Floats:
    """The whole distribution p = softmax(x) (vocabulary-size: only when asked for)."""
    p: Floats = np.exp(x - np.float32(dist.peak + dist.log_z), dtype=np.float32)
    return p
