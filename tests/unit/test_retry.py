"""Retries: which failures, how long between tries, and never after a token went out."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from llmservice.kernel.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LLMServiceError,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.providers.remote.retry import RetryPolicy, call_with_retries, stream_with_retries


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(time: FakeTime, attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, clock=time.clock, sleep=time.sleep, rng=random.Random(1))


def failing(*errors: LLMServiceError, result: str = "ok"):  # type: ignore[no-untyped-def]
    remaining = list(errors)
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if remaining:
            raise remaining.pop(0)
        return result

    call.calls = lambda: calls  # type: ignore[attr-defined]
    return call


async def test_5xx_and_429_are_retried_with_growing_jittered_backoff() -> None:
    time = FakeTime()
    call = failing(Unavailable("503"), Unavailable("502"), ResourceExhausted("429"))
    assert await call_with_retries(call, policy(time)) == "ok"
    assert call.calls() == 4
    ceilings = [0.5, 1.0, 2.0]
    assert all(0 <= s <= c for s, c in zip(time.sleeps, ceilings, strict=True))


async def test_a_timeout_before_the_answer_began_is_retried_one_after_it_is_not() -> None:
    time = FakeTime()
    call = failing(ProviderTimeout("no connection in time"), ProviderTimeout("HTTP 504"))
    assert await call_with_retries(call, policy(time)) == "ok"
    assert call.calls() == 3
    stalled = failing(DeadlineExceeded("stopped answering midway"))
    with pytest.raises(DeadlineExceeded):
        await call_with_retries(stalled, policy(time))
    assert stalled.calls() == 1


async def test_retry_after_is_waited_exactly() -> None:
    time = FakeTime()
    call = failing(ResourceExhausted("429", retry_after_s=3.0))
    assert await call_with_retries(call, policy(time)) == "ok"
    assert time.sleeps == [3.0]


async def test_a_retry_after_beyond_the_limit_goes_back_to_the_caller() -> None:
    time = FakeTime()
    error = ResourceExhausted("429", retry_after_s=120.0)
    with pytest.raises(ResourceExhausted) as raised:
        await call_with_retries(failing(error), policy(time))
    assert raised.value.retry_after_s == 120.0
    assert time.sleeps == []


@pytest.mark.parametrize(
    "error", [InvalidRequest("messages", "bad"), ProviderAuthFailed("openai rejected the key")]
)
async def test_client_errors_are_never_retried(error: LLMServiceError) -> None:
    time = FakeTime()
    call = failing(error)
    with pytest.raises(type(error)):
        await call_with_retries(call, policy(time))
    assert call.calls() == 1


async def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    time = FakeTime()
    call = failing(*(Unavailable(f"try {i}") for i in range(10)))
    with pytest.raises(Unavailable, match="try 2"):
        await call_with_retries(call, policy(time, attempts=3))
    assert call.calls() == 3


async def test_no_retry_that_would_end_after_the_deadline() -> None:
    time = FakeTime()
    call = failing(ResourceExhausted("429", retry_after_s=5.0))
    with pytest.raises(ResourceExhausted):
        await call_with_retries(call, policy(time), deadline=4.0)
    assert time.sleeps == []


async def test_a_stream_is_reopened_only_before_its_first_event() -> None:
    time = FakeTime()
    opened = 0

    async def stream() -> AsyncIterator[str]:
        nonlocal opened
        opened += 1
        if opened == 1:
            raise Unavailable("connection refused")
        yield "a"
        raise Unavailable("cut midway")

    seen: list[str] = []

    async def consume() -> None:
        async for event in stream_with_retries(stream, policy(time)):
            seen.append(event)

    with pytest.raises(Unavailable, match="cut midway"):
        await consume()
    assert seen == ["a"]
    assert opened == 2


def test_the_upstreams_x_should_retry_overrides_the_kind() -> None:
    """OpenAI's and Anthropic's `x-should-retry`: false stops even a 503, true retries even a 409."""
    from llmservice.providers.remote.http_errors import from_status

    policy = RetryPolicy(attempts=3, base_s=0.01)
    busy = from_status("p", 503, "busy", {"x-should-retry": "false"}, model="m")
    conflict = from_status("p", 409, "lock timeout", {"X-Should-Retry": "true"}, model="m")
    plain = from_status("p", 409, "conflict", {}, model="m")
    assert policy.backoff(0, busy) is None
    assert policy.backoff(0, conflict) is not None
    assert policy.backoff(0, plain) is None
    assert policy.backoff(0, from_status("p", 503, "busy", {}, model="m")) is not None
