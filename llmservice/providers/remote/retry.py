"""Retries for upstream calls: exponential backoff with full jitter, Retry-After honoured.

Only failures that a later attempt can fix are retried: connection failures and 5xx
(`Unavailable`), 429 (`ResourceExhausted`), and timeouts before the answer began: a
connection not made in time, HTTP 504 or 408 (`ProviderTimeout`). A read timeout once
the upstream is answering is final by its kind, as are 400, 401, 402, 403 and 404. Above
the kind, the upstream's own word decides (`x-should-retry`): `true` retries even what is
final by its kind, `false` retries nothing. A stream is retried only until its first
event: once a token has reached the caller, a failure ends the stream (a retry would
repeat or contradict what was sent).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from llmservice.kernel.errors import LLMServiceError, ProviderTimeout, ResourceExhausted, Unavailable

T = TypeVar("T")

RETRYABLE: tuple[type[LLMServiceError], ...] = (Unavailable, ResourceExhausted, ProviderTimeout)


@dataclass
class RetriesTaken:
    """How many retries a policy has taken, ever (the policy itself is frozen)."""

    count: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # tries in all, the first one included
    base_s: float = 0.5  # the first backoff's ceiling; it doubles each retry
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0  # a longer Retry-After is not waited for: the caller gets it
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    taken: RetriesTaken = field(default_factory=RetriesTaken)  # for metrics

    def backoff(self, retry: int, error: LLMServiceError) -> float | None:
        """Seconds to wait before retry number `retry` (0-based), or None to give up now."""
        if retry + 1 >= self.attempts or error.should_retry is False:
            return None
        if not isinstance(error, RETRYABLE) and error.should_retry is not True:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.max_retry_after_s else None
        return self.rng.uniform(0, min(self.max_backoff_s, self.base_s * 2**retry))


async def call_with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, *, deadline: float | None = None
) -> T:
    """`await call()`, retried under `policy` while the deadline allows."""
    retry = 0
    while True:
        try:
            return await call()
        except LLMServiceError as error:
            await _wait_or_raise(policy, retry, error, deadline)
            retry += 1


async def stream_with_retries(
    open_stream: Callable[[], AsyncIterator[T]], policy: RetryPolicy, *, deadline: float | None = None
) -> AsyncIterator[T]:
    """Events of `open_stream()`, reopened after a retryable failure before the first event."""
    retry = 0
    while True:
        stream = open_stream()
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return
        except LLMServiceError as error:
            await _aclose(stream)
            await _wait_or_raise(policy, retry, error, deadline)
            retry += 1
            continue
        break
    try:
        yield first
        async for event in stream:
            yield event
    finally:
        await _aclose(stream)


async def _wait_or_raise(
    policy: RetryPolicy, retry: int, error: LLMServiceError, deadline: float | None
) -> None:
    delay = policy.backoff(retry, error)
    if delay is None:
        raise error
    if deadline is not None and policy.clock() + delay >= deadline:
        raise error  # the upstream's failure, not the caller's deadline, is what went wrong
    policy.taken.count += 1
    await policy.sleep(delay)


async def _aclose(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
