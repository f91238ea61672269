"""Usage per principal and model in this process: what metrics and operators read.

Each finished request (cancelled ones too, with what they generated) is added here and
logged as one `usage` line. The totals are this replica's: a metrics scrape of every
replica sums them. Budget spend shared across replicas lives in the limit store instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llmservice.kernel.types import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UsageKey:
    principal: str
    provider: str
    model: str


@dataclass(slots=True)
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class UsageLedger:
    def __init__(self) -> None:
        self._totals: dict[UsageKey, UsageTotals] = {}

    def record(self, principal: str, provider: str, model: str, usage: Usage, cost_usd: float) -> None:
        totals = self._totals.setdefault(UsageKey(principal, provider, model), UsageTotals())
        totals.requests += 1
        totals.prompt_tokens += usage.prompt_tokens
        totals.completion_tokens += usage.completion_tokens
        totals.cost_usd += cost_usd
        # a max_tokens the provider lowered (to the context left) is said, not silently applied
        capped = f" max_tokens_capped_to={usage.max_tokens_capped_to}" if usage.max_tokens_capped_to else ""
        log.info(
            "usage principal=%s provider=%s model=%s prompt_tokens=%d completion_tokens=%d cost_usd=%.6f%s",
            principal,
            provider,
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
            cost_usd,
            capped,
            extra={
                "principal": principal,
                "provider": provider,
                "model": model,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": cost_usd,
                "max_tokens_capped_to": usage.max_tokens_capped_to,
            },
        )

    def snapshot(self) -> dict[UsageKey, UsageTotals]:
        """A copy of every total so far, keyed by (principal, provider, model)."""
        return {
            key: UsageTotals(t.requests, t.prompt_tokens, t.completion_tokens, t.cost_usd)
            for key, t in self._totals.items()
        }

    def of(self, principal: str) -> UsageTotals:
        """One principal's totals over every model."""
        out = UsageTotals()
        for key, t in self._totals.items():
            if key.principal == principal:
                out.requests += t.requests
                out.prompt_tokens += t.prompt_tokens
                out.completion_tokens += t.completion_tokens
                out.cost_usd += t.cost_usd
        return out
