"""How Anthropic's Messages API reads back: its stop reasons, its errors (HTTP and
in-stream), and the wire facts docs/providers.md prints. No HTTP here: the entry imports
this module to list the kinds, and the provider reads its mappings from it, so the two
cannot drift.

The names are the API reference's: `StopReason` of the Message object, and the error
types of the errors page (https://docs.claude.com/en/api/errors), by HTTP status.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmservice.kernel.provider import Wire
from llmservice.kernel.types import FinishReason

# Every stop_reason the API reference documents. pause_turn ends a turn that a server tool
# (web search, code execution) paused: this service offers none, and the text so far is
# the reply. A reason it does not document reads as a stop.
FINISH: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


def finish_reason(stop_reason: object) -> FinishReason:
    """Our finish reason for Anthropic's stop_reason (none, as before the end: a stop)."""
    return FINISH.get(str(stop_reason or "end_turn"), FinishReason.STOP)


# Every error type of the errors page, by HTTP status, and what a caller gets of it (the
# mapping itself is remote/http_errors.py's, the same for every remote provider).
# The HTTP status each error type goes with (the errors page), for an error sent inside a
# stream: read as the same error before the stream, so a refused request is not retried.
# overloaded_error and api_error stay failures midway (UNAVAILABLE), as their 529 and 500.
STREAM_ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "timeout_error": 504,
}

ERRORS: Mapping[str, str] = {
    "400 invalid_request_error": "INVALID_ARGUMENT, Anthropic's message",
    "401 authentication_error": (
        "FAILED_PRECONDITION, check the configured key; Anthropic's message is not sent"
    ),
    "402 billing_error": "FAILED_PRECONDITION: the service's account, with Anthropic's message; not retried",
    "403 permission_error": "FAILED_PRECONDITION; Anthropic's message is not sent",
    "404 not_found_error": "NOT_FOUND, naming the model, with Anthropic's message",
    "413 request_too_large": "INVALID_ARGUMENT, Anthropic's message (sent by Cloudflare, before the API)",
    "429 rate_limit_error": "RESOURCE_EXHAUSTED, Anthropic's message, retried (after its retry-after)",
    "500 api_error": "UNAVAILABLE, Anthropic's message, retried",
    "504 timeout_error": "DEADLINE_EXCEEDED, retried",
    "529 overloaded_error": "UNAVAILABLE, Anthropic's message, retried",
    "event: error": (
        "by its type, as the same error before the stream (e.g. invalid_request_error: "
        "INVALID_ARGUMENT, not retried); overloaded_error and api_error UNAVAILABLE (failed "
        "midway), retried before the first token; final once text has reached the caller"
    ),
    "x-should-retry": (
        "Anthropic's own word on an error: `false` is never retried, `true` is, whatever its status"
    ),
}

WIRE = Wire(
    honoured={
        "messages": (
            "`messages` (tool results as user `tool_result` blocks, same-role turns merged), "
            "system ones joined into `system`"
        ),
        "sampling.max_tokens": "`max_tokens` (Anthropic requires one: else the `max_tokens` setting)",
        "sampling.temperature": (
            "`temperature` (0 to 1; else the `temperature` setting, but not beside a request's "
            "`top_p`: newer models take only one of the two)"
        ),
        "sampling.top_p": (
            "`top_p`; beside a request's own temperature both go, as asked: older models take "
            "the two, newer ones answer 400 (`temperature` and `top_p` cannot both be specified "
            "for this model), which the caller gets as INVALID_ARGUMENT in Anthropic's words"
        ),
        "sampling.top_k": "`top_k`",
        "sampling.stop": "`stop_sequences`",
        "tools": (
            "`tools[]` with `input_schema`; when none are offered but the history holds tool "
            "calls, the tools it calls are declared with a permissive schema and `tool_choice` "
            "`none` (Anthropic refuses tool blocks without `tools`)"
        ),
        "tool_choice": "`tool_choice`: auto `auto`, none `none`, required `any`, function `tool`",
        "parallel_tool_calls": "false: `tool_choice.disable_parallel_tool_use`",
        "user": "`metadata.user_id`, which Anthropic reads to detect abuse",
        "attachments": "images as base64 `image` blocks (jpeg, png, gif, webp), text ones as text blocks",
        "cache_salt": "not sent: the Messages API has no such field",
    },
    refused={
        "sampling.temperature": "above 1: Anthropic takes 0 to 1",
        "sampling.seed, min_p, repetition_penalty": "no such parameter in the Messages API",
        "sampling.frequency_penalty, presence_penalty": "no such parameter in the Messages API",
        "signal_options": "the Messages API returns no per-token probabilities",
        "response_format": (
            "not spoken here (Anthropic's `output_config.format` is not sent): a forced tool is the way"
        ),
        "attachments": "anything but text and images",
    },
    finish=FINISH,
    errors=ERRORS,
)
