"""Budgets: what a principal may spend per period, checked before a request and settled after.

Before a request runs, its estimated cost (prompt estimate + max_tokens, priced) is
reserved against the period's spend; a request whose reservation would pass the budget
is refused, so no single request overshoots by more than its estimate was wrong. After
it, the reservation is replaced by the real cost. Periods are UTC calendar days or
months, or "total" (never resets). A request to an unpriced (free) model always passes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class Period:
    """One budget period: the key its spend is kept under, and when it ends."""

    name: str  # "total", "2025-01-31", "2025-01"
    ends_at: float | None  # wall-clock seconds; None: never

    def remaining_s(self, now: float) -> float | None:
        return None if self.ends_at is None else max(0.0, self.ends_at - now)

    def ttl_s(self, now: float) -> int:
        """How long to keep its spend: a day past its end (0: forever)."""
        remaining = self.remaining_s(now)
        return 0 if remaining is None else int(remaining) + DAY_S


def period(kind: str, now: float) -> Period:
    """The period of kind "total", "day" or "month" that `now` (Unix seconds) falls in."""
    if kind == "total":
        return Period("total", None)
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if kind == "day":
        end = day + dt.timedelta(days=1)
        return Period(day.isoformat(), _midnight(end))
    if kind == "month":
        end = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        return Period(day.strftime("%Y-%m"), _midnight(end))
    raise ValueError(f"unknown budget period {kind!r}")


def _midnight(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def allowed(spent: float, estimate: float, budget: float) -> bool:
    """Whether a request estimated at `estimate` USD may start with `spent` of `budget` gone."""
    return estimate <= 0 or spent + estimate <= budget


def exhausted_message(principal: str, spent: float, budget: float, estimate: float, kind: str) -> str:
    per = {"total": "in total", "day": "today", "month": "this month"}[kind]
    return (
        f"budget exhausted for principal {principal!r}: ${spent:.4f} of ${budget:.4f} spent {per}, "
        f"and this request may cost up to ${estimate:.4f}"
    )
