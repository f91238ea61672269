"""Upstream HTTP statuses as domain errors, Retry-After, and redaction."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from llmservice.kernel.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LLMServiceError,
    NotFound,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.providers.remote.http import transport_errors
from llmservice.providers.remote.http_errors import failed_midway, from_status, redact, retry_after

KEY = "sk-abcdefghijklmnop"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidRequest),
        (401, ProviderAuthFailed),
        (403, ProviderAuthFailed),
        (404, NotFound),
        (408, ProviderTimeout),
        (422, InvalidRequest),
        (429, ResourceExhausted),
        (500, Unavailable),
        (502, Unavailable),
        (503, Unavailable),
        (504, ProviderTimeout),
    ],
)
def test_each_status_has_its_domain_error(status: int, error: type[LLMServiceError]) -> None:
    mapped = from_status("anthropic", status, f"upstream says {KEY}", {}, model="m", secrets=[KEY])
    assert type(mapped) is error
    assert "anthropic" in mapped.message
    assert KEY not in mapped.message
    assert KEY[3:11] not in mapped.message


def test_an_upstream_timeout_before_the_answer_is_still_deadline_exceeded() -> None:
    mapped = from_status("openai", 504, "gateway timeout", {"retry-after": "2"}, model="m")
    assert isinstance(mapped, DeadlineExceeded)
    assert mapped.retry_after_s == 2.0


async def test_a_connect_timeout_is_a_provider_timeout_a_read_timeout_is_not() -> None:
    request = httpx.Request("GET", "http://127.0.0.1:9/")
    with pytest.raises(ProviderTimeout, match="connection"):
        async with transport_errors("ollama"):
            raise httpx.ConnectTimeout("slow", request=request)
    with pytest.raises(DeadlineExceeded) as raised:
        async with transport_errors("ollama"):
            raise httpx.ReadTimeout("slow", request=request)
    assert type(raised.value) is DeadlineExceeded


def test_an_error_inside_a_stream_is_unavailable_and_redacted() -> None:
    error = failed_midway("anthropic", f"overloaded_error: try later, {KEY}", [KEY])
    assert isinstance(error, Unavailable)
    assert KEY[3:11] not in error.message
    assert error.message.startswith("provider anthropic failed midway: overloaded_error")


def test_a_rejected_credential_drops_the_upstream_text() -> None:
    mapped = from_status("openai", 401, "Incorrect API key provided: sk-abc***nop", {}, model="m")
    assert "sk-abc" not in mapped.message
    assert mapped.message.startswith("provider openai rejected the service's credentials")


def test_retry_after_in_seconds_milliseconds_or_an_http_date() -> None:
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after({"retry-after": when}) or 0) <= 30
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    mapped = from_status("openai", 429, "slow", {"retry-after": "3"}, model="m")
    assert mapped.retry_after_s == 3.0


def test_redact_hides_the_secret_and_any_long_run_of_it() -> None:
    text = f"key {KEY}, masked sk-abcdef***mnop, part {KEY[4:14]}"
    cleaned = redact(text, [KEY])
    assert all(KEY[i : i + 8] not in cleaned for i in range(len(KEY) - 7))
    assert redact("nothing here", [KEY, ""]) == "nothing here"
