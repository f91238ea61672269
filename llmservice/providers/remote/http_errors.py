"""Upstream HTTP failures as domain errors, the same way for every remote backend.

A rejected credential names the provider and never the key: upstream messages for
401 and 403 are dropped (OpenAI's echo part of the key), and every other upstream
text passes through `redact` first.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable, Mapping

from llmservice.kernel.errors import (
    InvalidRequest,
    LLMServiceError,
    NotFound,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.redact import redact

__all__ = ["failed_midway", "from_status", "redact", "retry_after", "should_retry"]


def from_status(
    provider: str,
    status: int,
    message: str,
    headers: Mapping[str, str],
    *,
    model: str,
    secrets: Iterable[str] = (),
) -> LLMServiceError:
    """The domain error for an upstream HTTP status (4xx or 5xx), carrying the upstream's
    own word on retrying it (`x-should-retry`, which OpenAI and Anthropic send), if any."""
    error = _from_status(provider, status, message, headers, model=model, secrets=secrets)
    error.should_retry = should_retry(headers)
    return error


def should_retry(headers: Mapping[str, str]) -> bool | None:
    """`x-should-retry: true` or `false`, as the upstream sent it; None when it did not say."""
    value = next((v for k, v in headers.items() if k.lower() == "x-should-retry"), None)
    return {"true": True, "false": False}.get((value or "").strip().lower())


def _from_status(
    provider: str,
    status: int,
    message: str,
    headers: Mapping[str, str],
    *,
    model: str,
    secrets: Iterable[str] = (),
) -> LLMServiceError:
    if status in (401, 403):
        return ProviderAuthFailed(
            f"provider {provider} rejected the service's credentials (HTTP {status}); "
            "check the configured key"
        )
    text = redact(message, secrets) or f"HTTP {status}"
    if status == 402:  # the service's account at the provider: credit or billing, not the request
        return ProviderAuthFailed(
            f"provider {provider} refused the service's account (HTTP 402, billing or credit): {text}"
        )
    if status == 404:
        return NotFound(f"provider {provider} does not know model {model!r}: {text}")
    if status == 429:
        return ResourceExhausted(
            f"provider {provider} is rate limiting: {text}", retry_after_s=retry_after(headers)
        )
    if status in (408, 504):  # the upstream gave up before answering: worth another try
        return ProviderTimeout(
            f"provider {provider} timed out (HTTP {status}): {text}", retry_after_s=retry_after(headers)
        )
    if status >= 500:
        return Unavailable(
            f"provider {provider} failed (HTTP {status}): {text}", retry_after_s=retry_after(headers)
        )
    return InvalidRequest("request", f"provider {provider} refused it (HTTP {status}): {text}")


def failed_midway(provider: str, message: str, secrets: Iterable[str] = ()) -> Unavailable:
    """An error the upstream reported inside a reply or stream it had begun."""
    return Unavailable(f"provider {provider} failed midway: {redact(message, secrets) or 'no reason given'}")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if present."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(float(lowered["retry-after-ms"]) / 1000, 0.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
