"""Budgets, rate limits, pricing and usage (llmservice.service.limits), on a fake clock: no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import grpc
import pytest

from llmservice.grpc_api.status import KIND_KEY, RETRY_AFTER_KEY, to_status
from llmservice.kernel.errors import BudgetExhausted, RateLimited, ResourceExhausted
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, Message, Sampling, TokenDelta, Usage
from llmservice.service.auth import LOCAL, Principal
from llmservice.service.core import LLMCore
from llmservice.service.limits import Limits, UsageKey
from llmservice.service.limits.budgets import period
from llmservice.service.limits.pricing import Price, PriceBook, estimate, unpriced
from llmservice.service.limits.rate_limit import Bucket
from llmservice.service.limits.store import MemoryStore
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import LimitsSettings, PriceSettings, PrincipalLimits, Settings

from ..fakes.words_provider import Words

ALICE = Principal("alice")
# $1 per million tokens in, $2 out: a request of 10 in and 3 out costs $0.000016
PRICES = {"fake/*": PriceSettings(input_per_mtok=1.0, output_per_mtok=2.0)}
T0 = dt.datetime(2025, 3, 31, 23, 59, 0, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ask(max_tokens: int | None = 3, text: str = "hi") -> ChatRequest:
    return ChatRequest((Message("user", text),), sampling=Sampling(max_tokens=max_tokens))


def core_with(rules: dict[str, PrincipalLimits], clock: Clock, provider: Words | None = None) -> LLMCore:
    provider = provider or Words()
    limits = Limits(LimitsSettings(principals=rules), PriceBook(PRICES), MemoryStore(), clock)
    return LLMCore(ProviderRegistry({provider.name: provider}, provider.name), limits=limits)


# --- rate limits ---------------------------------------------------------------------------


async def test_requests_per_minute_refuse_with_a_retry_hint_and_refill_with_time() -> None:
    clock = Clock()
    core = core_with({"alice": PrincipalLimits(requests_per_minute=2)}, clock)
    await core.complete(ask(), ALICE)
    await core.complete(ask(), ALICE)
    with pytest.raises(RateLimited) as refused:
        await core.complete(ask(), ALICE)
    assert refused.value.retry_after_s == pytest.approx(30.0)  # one request refills in 60/2 s
    assert "rate limit" in refused.value.message
    assert "2 requests per minute" in refused.value.message
    await core.complete(ask(), LOCAL)  # others have limits of their own (none here)
    clock.now += 30
    await core.complete(ask(), ALICE)


async def test_tokens_per_minute_take_the_estimate_and_give_back_what_was_not_used() -> None:
    clock = Clock()
    core = core_with({"*": PrincipalLimits(tokens_per_minute=100)}, clock)
    store = core.limits.store
    # the estimate is the prompt (~5) plus max_tokens 50; the real use is 10 + 3
    await core.complete(ask(max_tokens=50), ALICE)
    assert await store.take([Bucket("tpm:alice", 100, 87)], clock.now) == 0  # 100 - 13 left
    assert await store.take([Bucket("tpm:alice", 100, 1)], clock.now) > 0


async def test_a_refused_request_takes_nothing_from_any_bucket() -> None:
    store, now = MemoryStore(), T0
    both = [Bucket("rpm:a", 10, 1), Bucket("tpm:a", 100, 200)]
    assert await store.take(both, now) == pytest.approx((200 - 100) * 60 / 100)
    assert await store.take([Bucket("rpm:a", 10, 10), Bucket("tpm:a", 100, 100)], now) == 0


async def test_a_request_larger_than_the_minute_runs_once_the_bucket_is_full_then_waits_it_out() -> None:
    clock = Clock()
    core = core_with({"alice": PrincipalLimits(tokens_per_minute=20)}, clock, Words(prompt_tokens=30))
    await core.complete(ask(max_tokens=500), ALICE)  # estimated at the whole minute (20), used 33
    with pytest.raises(RateLimited) as refused:
        await core.complete(ask(max_tokens=1), ALICE)
    assert refused.value.retry_after_s == pytest.approx((13 + 6) * 60 / 20)  # the debt, then this ask (5 + 1)


# --- budgets -------------------------------------------------------------------------------


async def test_a_budget_stops_the_next_request_and_says_it_is_exhausted() -> None:
    clock = Clock()
    rules = PrincipalLimits(budget_usd=0.00004, budget_period="day")
    core = core_with({"alice": rules}, clock)
    await core.complete(ask(), ALICE)  # costs 0.000016
    await core.complete(ask(), ALICE)  # 0.000032 spent; the next is estimated at ~0.000013
    assert await core.limits.spent("alice") == pytest.approx(0.000032)
    with pytest.raises(BudgetExhausted) as refused:
        await core.complete(ask(), ALICE)
    assert "budget exhausted" in refused.value.message
    assert refused.value.retry_after_s == pytest.approx(60)  # the day ends at midnight UTC
    clock.now += 60  # a new day, a new budget
    await core.complete(ask(), ALICE)


async def test_the_estimate_keeps_one_request_from_overshooting() -> None:
    core = core_with({"alice": PrincipalLimits(budget_usd=0.0001)}, Clock())
    with pytest.raises(BudgetExhausted):  # 1000 tokens out may cost $0.002
        await core.complete(ask(max_tokens=1000), ALICE)
    assert await core.limits.spent("alice") == 0


async def test_concurrent_requests_cannot_share_the_last_of_a_budget() -> None:
    provider = Words()
    provider.hold = asyncio.Event()
    core = core_with({"alice": PrincipalLimits(budget_usd=0.00002, budget_period="total")}, Clock(), provider)
    first = core.stream(ask(), ALICE)
    assert isinstance(await anext(first.events), TokenDelta)  # admitted and under way, holding ~$0.000011
    with pytest.raises(BudgetExhausted):
        await core.complete(ask(), ALICE)
    provider.hold.set()
    assert [e async for e in first.events]


async def test_a_free_model_passes_a_spent_budget() -> None:
    clock = Clock()
    free = Words("local")
    core = core_with({"alice": PrincipalLimits(budget_usd=0.00001)}, clock, free)
    for _ in range(3):
        await core.complete(ask(), ALICE)


async def test_a_cancelled_stream_records_what_it_generated() -> None:
    provider = Words(words=("a", "b", "c", "d"))
    provider.hold = asyncio.Event()
    core = core_with({"alice": PrincipalLimits(budget_usd=1.0)}, Clock(), provider)
    stream = core.stream(ask(max_tokens=100, text="x" * 40), ALICE)
    async with contextlib.aclosing(stream.events) as events:
        await anext(events)  # one token, then the caller leaves
    totals = core.limits.ledger.snapshot()[UsageKey("alice", "fake", "m")]
    assert (totals.requests, totals.completion_tokens) == (1, 1)
    assert totals.prompt_tokens == 14  # the estimate: 40 characters and a message
    assert await core.limits.spent("alice") == pytest.approx((14 * 1 + 1 * 2) / 1e6)


async def test_a_cancelled_whole_completion_records_its_estimated_prompt() -> None:
    provider = Words()
    provider.hold = asyncio.Event()  # never set: the reply never comes
    core = core_with({"alice": PrincipalLimits(budget_usd=1.0)}, Clock(), provider)
    running = asyncio.create_task(core.complete(ask(max_tokens=100, text="x" * 40), ALICE))
    while not provider.calls:  # noqa: ASYNC110 -- until the provider holds it
        await asyncio.sleep(0)
    running.cancel()  # as grpc.aio does when the deadline passes or the caller leaves
    with pytest.raises(asyncio.CancelledError):
        await running
    totals = core.limits.ledger.snapshot()[UsageKey("alice", "fake", "m")]
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, 14, 0)
    assert await core.limits.spent("alice") == pytest.approx(14 * 1 / 1e6)


async def test_a_failed_request_costs_nothing_and_records_no_usage() -> None:
    class Failing(Words):
        async def complete(self, model: str, request: ChatRequest) -> object:  # type: ignore[override]
            raise ResourceExhausted("queue full")

    core = core_with({"alice": PrincipalLimits(budget_usd=1.0, tokens_per_minute=1000)}, Clock(), Failing())
    with pytest.raises(ResourceExhausted):
        await core.complete(ask(), ALICE)
    assert await core.limits.spent("alice") == 0
    assert core.limits.ledger.snapshot() == {}
    assert await core.limits.store.take([Bucket("tpm:alice", 1000, 1000)], T0) == 0  # all given back


def test_periods_are_utc_calendar_days_and_months() -> None:
    assert period("day", T0).name == "2025-03-31"
    assert period("month", T0).name == "2025-03"
    assert period("month", T0).remaining_s(T0) == 60
    december = dt.datetime(2024, 12, 15, tzinfo=dt.UTC).timestamp()
    assert period("month", december).ends_at == dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
    assert period("total", T0).ends_at is None


# --- pricing, usage, settings ------------------------------------------------------------


def test_the_longest_matching_price_wins_and_costs_are_per_million() -> None:
    book = PriceBook(
        {
            "openai/*": PriceSettings(input_per_mtok=1.0, output_per_mtok=1.0),
            "openai/gpt-4o-mini": PriceSettings(input_per_mtok=0.15, output_per_mtok=0.6),
        }
    )
    assert book.price("openai", "gpt-4o-mini") == Price(0.15, 0.6)
    assert book.price("openai", "gpt-4o") == Price(1.0, 1.0)
    assert book.price("anthropic", "x") is None
    assert book.cost("openai", "gpt-4o-mini", Usage(1_000_000, 1_000_000)) == pytest.approx(0.75)


def test_the_estimate_is_the_prompt_and_max_tokens_or_the_default_cap() -> None:
    assert estimate(ask(max_tokens=7, text="x" * 400), 1024) == Usage(104, 7)
    assert estimate(ask(max_tokens=None), 1024).completion_tokens == 1024


def test_an_unpriced_or_zero_priced_paid_provider_is_warned_about() -> None:
    settings = Settings(
        openai={"api_key": "sk-test", "model": "gpt-4o-mini"},
        anthropic={"api_key": "a-test"},
        pricing={"anthropic/*": PriceSettings()},
    )
    warnings = list(unpriced(settings, PriceBook(settings.pricing)))
    assert len(warnings) == 2
    assert "openai/gpt-4o-mini has no price" in warnings[0]
    assert "has price 0" in warnings[1]
    assert "sk-test" not in " ".join(warnings)
    priced = Settings(openai={"api_key": "k"}, pricing={"openai/*": PriceSettings(input_per_mtok=1)})
    assert not list(unpriced(priced, PriceBook(priced.pricing)))


def test_a_price_key_needs_a_provider_and_limits_need_a_known_principal() -> None:
    with pytest.raises(SettingsError, match="provider/model"):
        PriceBook({"gpt-4o": PriceSettings()})
    with pytest.raises(SettingsError, match=r"limits\.principals\.bob"):
        Limits.from_settings(Settings(limits={"principals": {"bob": {"requests_per_minute": 1}}}))
    assert Limits.from_settings(Settings(limits={"principals": {"local": {"requests_per_minute": 1}}}))


async def test_usage_is_kept_per_principal_and_model_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    core = core_with({}, Clock())
    with caplog.at_level(logging.INFO, logger="llmservice.service.limits.usage"):
        await core.complete(ask(), ALICE)
        await core.complete(ask(), ALICE)
        _ = [e async for e in core.stream(ask(), LOCAL).events]
    alice = core.limits.ledger.of("alice")
    assert (alice.requests, alice.prompt_tokens, alice.completion_tokens) == (2, 20, 6)
    assert alice.cost_usd == pytest.approx(2 * 0.000016)
    assert core.limits.ledger.of("local").requests == 1
    assert "usage principal=alice provider=fake model=m prompt_tokens=10 completion_tokens=3" in caplog.text


def test_limits_map_to_resource_exhausted_with_a_retry_hint_and_their_kind() -> None:
    code, _, trailers = to_status(RateLimited("rate limit reached", retry_after_s=1.5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(trailers) == {RETRY_AFTER_KEY: "1.5", KIND_KEY: "rate_limit_exceeded"}
    code, _, trailers = to_status(BudgetExhausted("budget exhausted for principal 'a'"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(trailers) == {KIND_KEY: "insufficient_quota"}
