"""The one object the core calls around each request: admit it (or refuse it), then settle it.

Admission reserves the request's estimated cost against its principal's budget and takes
from its rate-limit buckets; either refusal is RESOURCE_EXHAUSTED (HTTP 429) with a retry
hint. Settling records the real usage (in the ledger and the log), replaces the budget
reservation with the real cost, and gives the tokens bucket back what was over-estimated.
A request cut short (cancelled, its caller gone, its deadline passed) is recorded too: with
the prompt it was estimated at and what it generated, when known.
A principal with no limits costs a dictionary update per request and no store calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from llmservice.kernel.errors import BudgetExhausted, RateLimited
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, StreamEnd, StreamEvent, TokenDelta, Usage
from llmservice.service.auth import LOCAL, Principal
from llmservice.service.limits import budgets
from llmservice.service.limits.pricing import PriceBook, estimate, estimate_text_tokens, unpriced
from llmservice.service.limits.rate_limit import Bucket
from llmservice.service.limits.store import LimitStore, MemoryStore
from llmservice.service.limits.usage import UsageLedger
from llmservice.service.settings import LimitsSettings, PrincipalLimits, Settings

log = logging.getLogger(__name__)

EVERYONE = "*"
# How a request is cut short from outside: asyncio cancels it (its gRPC deadline passed, its
# caller went away) or its stream is closed early. It may have run a while: it is recorded.
# A domain error (a deadline passed in the queue, a provider's timeout) is a failure instead.
CUT_SHORT = (asyncio.CancelledError, GeneratorExit)


@dataclass
class Ticket:
    """An admitted request: what it was estimated at and what it holds, until settled."""

    limits: Limits
    principal: str
    provider: str
    model: str
    estimate: Usage
    rules: PrincipalLimits | None
    reserved_usd: float = 0.0
    budget_key: str = ""
    budget_ttl_s: int = 0
    tokens_taken: float = 0.0
    usage: Usage | None = None
    served_by: str = ""
    _settled: bool = field(default=False, repr=False)

    def used(self, usage: Usage, provider: str = "") -> None:
        """The request's real usage, and who served it when not `provider` (a route's deployment)."""
        self.usage, self.served_by = usage, provider

    def cut_short(self, generated: int = 0) -> None:
        """Cut short before its usage came: the prompt as estimated, and what it generated."""
        if self.usage is None:
            self.used(Usage(self.estimate.prompt_tokens, generated))

    async def settle(self) -> None:
        """Record the usage (none if `used` was never called) and release what admission held."""
        if self._settled:
            return
        self._settled = True
        await self.limits.settle(self)


class Limits:
    def __init__(
        self,
        settings: LimitsSettings,
        prices: PriceBook,
        store: LimitStore | None = None,
        clock: Callable[[], float] = time.time,
        closing: contextlib.AbstractAsyncContextManager[object] | None = None,
    ) -> None:
        """`clock` is wall time (budget periods are calendar ones, buckets are shared across
        replicas); `closing` is what to close on exit (the Redis client)."""
        self._settings, self.prices, self._clock = settings, prices, clock
        self.store: LimitStore = store or MemoryStore()
        self.ledger = UsageLedger()
        self._closing = closing

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """Prices and limits from settings; Redis holds the limits when the cache uses it."""
        prices = PriceBook(settings.pricing)
        for warning in unpriced(settings, prices):
            log.warning(warning)
        known = {*settings.auth.principals, EVERYONE} if settings.auth.principals else {LOCAL.name, EVERYONE}
        for name in settings.limits.principals:
            if name not in known:
                raise SettingsError(
                    f"limits.principals.{name}: no such principal; known: {', '.join(sorted(known))}"
                )
        if not settings.limits.principals or not settings.cache.uses_redis:
            return cls(settings.limits, prices)
        from llmservice.service.limits.redis_store import SharedStore
        from llmservice.service.sessions.fallback import connect  # on use: sessions import the core

        client = connect(settings.cache.redis_url or "redis://127.0.0.1:6379/0")
        return cls(settings.limits, prices, SharedStore(client), closing=contextlib.aclosing(client))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closing is not None:
            await self._closing.__aexit__(None, None, None)

    def rules(self, principal: str) -> PrincipalLimits | None:
        found = self._settings.principals
        return found.get(principal) or found.get(EVERYONE)

    @contextlib.asynccontextmanager
    async def chat(
        self, principal: Principal, provider: str, model: str, request: ChatRequest
    ) -> AsyncIterator[Ticket]:
        """Admit a whole (unary) completion; the block calls `used` with its usage. A failed
        one records nothing; one cut short, its estimated prompt (its reply never came back)."""
        ticket = await self.admit(
            principal, provider, model, estimate(request, self._settings.default_max_tokens)
        )
        try:
            yield ticket
        except CUT_SHORT:
            ticket.cut_short()
            raise
        finally:
            await ticket.settle()

    @contextlib.asynccontextmanager
    async def embedding(
        self, principal: Principal, provider: str, model: str, texts: tuple[str, ...]
    ) -> AsyncIterator[Ticket]:
        ticket = await self.admit(principal, provider, model, Usage(estimate_text_tokens(texts), 0))
        try:
            yield ticket
        except CUT_SHORT:
            ticket.cut_short()
            raise
        finally:
            await ticket.settle()

    async def metered(
        self,
        principal: Principal,
        provider: str,
        model: str,
        request: ChatRequest,
        events: AsyncGenerator[StreamEvent],
    ) -> AsyncGenerator[StreamEvent]:
        """`events`, admitted before the first is asked for and settled when they end. A stream
        cut short (the caller left, its deadline passed) records its estimated prompt and the
        tokens it generated; one that failed, the tokens it generated, if any."""
        try:
            ticket = await self.admit(
                principal, provider, model, estimate(request, self._settings.default_max_tokens)
            )
        except BaseException:
            await events.aclose()
            raise
        generated = 0
        try:
            async with contextlib.aclosing(events) as inner:
                async for event in inner:
                    if isinstance(event, TokenDelta):
                        generated += 1
                    elif isinstance(event, StreamEnd):
                        ticket.used(event.usage, event.provider)
                    yield event
        except CUT_SHORT:
            ticket.cut_short(generated)
            raise
        finally:
            if generated:
                ticket.cut_short(generated)
            await ticket.settle()

    async def admit(self, principal: Principal, provider: str, model: str, estimated: Usage) -> Ticket:
        """Reserve the estimate against the budget, then take from the buckets; raise if either refuses."""
        rules = self.rules(principal.name)
        ticket = Ticket(self, principal.name, provider, model, estimated, rules)
        if rules is None:
            return ticket
        now = self._clock()
        if rules.budget_usd > 0:
            await self._reserve(ticket, rules, now)
        buckets = self._buckets(principal.name, rules, estimated)
        if buckets:
            wait = await self.store.take(buckets, now)
            if wait > 0:
                if ticket.reserved_usd:
                    await self.store.add(ticket.budget_key, -ticket.reserved_usd, ticket.budget_ttl_s)
                raise RateLimited(
                    f"rate limit reached for principal {principal.name!r} ({_rates(rules)}); "
                    f"retry in {wait:.1f} s",
                    retry_after_s=round(wait, 3),
                )
            ticket.tokens_taken = next((b.amount for b in buckets if b.key.startswith("tpm:")), 0.0)
        return ticket

    async def _reserve(self, ticket: Ticket, rules: PrincipalLimits, now: float) -> None:
        period = budgets.period(rules.budget_period, now)
        ticket.budget_key = f"budget:{ticket.principal}:{period.name}"
        ticket.budget_ttl_s = period.ttl_s(now)
        cost = self.prices.cost(ticket.provider, ticket.model, ticket.estimate)
        if cost <= 0:
            spent = None  # a free model passes, whatever is left
        else:
            spent = await self.store.reserve(ticket.budget_key, cost, rules.budget_usd, ticket.budget_ttl_s)
        if spent is not None:
            message = budgets.exhausted_message(
                ticket.principal, spent, rules.budget_usd, cost, rules.budget_period
            )
            raise BudgetExhausted(message, retry_after_s=period.remaining_s(now))
        ticket.reserved_usd = max(cost, 0.0)

    def _buckets(self, principal: str, rules: PrincipalLimits, estimated: Usage) -> list[Bucket]:
        buckets = []
        if rules.requests_per_minute:
            buckets.append(Bucket(f"rpm:{principal}", rules.requests_per_minute, 1))
        if rules.tokens_per_minute:
            # a request larger than the whole minute's tokens may still run, once the bucket is full
            need = min(estimated.total_tokens, rules.tokens_per_minute)
            buckets.append(Bucket(f"tpm:{principal}", rules.tokens_per_minute, need))
        return buckets

    async def settle(self, ticket: Ticket) -> None:
        usage = ticket.usage or Usage()
        provider = ticket.served_by or ticket.provider
        cost = self.prices.cost(provider, ticket.model, usage)
        if ticket.usage is not None:
            self.ledger.record(ticket.principal, provider, ticket.model, usage, cost)
        if ticket.rules is not None:
            # shielded: a caller cancelled meanwhile must not leave its reservation in place
            await asyncio.shield(self._release(ticket, ticket.rules, usage, cost))

    async def _release(self, ticket: Ticket, rules: PrincipalLimits, usage: Usage, cost: float) -> None:
        """Replace the budget reservation with the real cost; give back over-estimated tokens."""
        try:
            if ticket.budget_key and cost != ticket.reserved_usd:
                await self.store.add(ticket.budget_key, cost - ticket.reserved_usd, ticket.budget_ttl_s)
            if rules.tokens_per_minute and ticket.tokens_taken != usage.total_tokens:
                back = ticket.tokens_taken - usage.total_tokens
                await self.store.give_back(
                    f"tpm:{ticket.principal}", rules.tokens_per_minute, back, self._clock()
                )
        except Exception:  # settling must never fail the request it is about
            log.exception("could not settle the limits of a request of principal %s", ticket.principal)

    async def spent(self, principal: str) -> float:
        """What `principal` has spent in its current budget period (0 without a budget)."""
        rules = self.rules(principal)
        if rules is None or not rules.budget_usd:
            return 0.0
        period = budgets.period(rules.budget_period, self._clock())
        return await self.store.spent(f"budget:{principal}:{period.name}")

    @classmethod
    def unlimited(cls) -> Limits:
        """Usage recorded, nothing enforced, nothing priced."""
        return cls(LimitsSettings(), PriceBook({}))


def _rates(rules: PrincipalLimits) -> str:
    parts = []
    if rules.requests_per_minute:
        parts.append(f"{rules.requests_per_minute} requests")
    if rules.tokens_per_minute:
        parts.append(f"{rules.tokens_per_minute} tokens")
    return " and ".join(parts) + " per minute"
