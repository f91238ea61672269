"""How OpenAI's Chat Completions API reads back, for `openai` and `azure_openai`: its finish
reasons, its refusals, Azure's content filter, its errors, and the wire facts
docs/providers.md prints.

One place for what the provider does with the replies and what the docs say of them
(`OPENAI_WIRE` and `AZURE_OPENAI_WIRE`, on the entries), so the two cannot drift. No SDK
here: the entries import this module to list the kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmservice.kernel.provider import Wire
from llmservice.kernel.types import FinishReason

# Every finish_reason of the API reference (CreateChatCompletionResponse.choices[].finish_reason).
# `function_call` is the deprecated `functions` API's: a call it made is read as a tool call.
FINISH: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}

# The name the token limit goes by. OpenAI deprecated `max_tokens` for chat: its reasoning
# models (o1, o3, o4-mini, gpt-5...) refuse it, and every current model takes the new name,
# on OpenAI and on Azure alike. Servers that merely speak the API (vLLM, llama.cpp, TGI...)
# keep the old one, which all of them read; the legacy /completions API has only `max_tokens`.
MAX_TOKENS = "max_completion_tokens"

# Azure's api-versions before this one refuse `max_completion_tokens` ("Unrecognized request
# argument supplied"): a deployment pinned to one of them keeps the old name.
AZURE_FIRST_WITH_MAX_COMPLETION_TOKENS = "2024-09-01-preview"


def azure_max_tokens_field(api_version: str) -> str:
    """The token limit's name for an Azure api-version: a dated one by its date, the
    undated ones (`v1`, `preview`, `latest`), all newer than the dated, the new name."""
    dated = api_version[:4].isdigit()
    return "max_tokens" if dated and api_version < AZURE_FIRST_WITH_MAX_COMPLETION_TOKENS else MAX_TOKENS


# An error code that no retry will fix: the account has no credit left for this period.
NOT_RETRIED_CODES = frozenset({"insufficient_quota"})


def finish_reason(reason: object, *, called_tools: bool, refused: bool) -> FinishReason:
    """Our finish reason for a choice's `finish_reason` and what the choice held.

    OpenAI says `stop` for a refusal (`message.refusal`): the model declined, which the caller
    must not read as an answer, so it is CONTENT_FILTER. It says `stop` too when a forced
    (named) `tool_choice` made the call: a reply that holds tool calls ends in TOOL_CALLS,
    unless it was cut short or filtered, which the caller must still hear of. A reason the
    reference does not list (or none) reads as a stop."""
    if refused:
        return FinishReason.CONTENT_FILTER
    return FINISH.get(str(reason or "stop"), FinishReason.STOP).with_tool_calls(called_tools)


def content_filter_refusal(error: object) -> str | None:
    """What Azure's content filter refused, from an error object whose code is `content_filter`
    (`innererror.content_filter_result`: each category, whether it filtered, its severity),
    e.g. "hate (high), violence (medium)"; None for any other error."""
    if not isinstance(error, dict) or error.get("code") != "content_filter":
        return None
    inner = error.get("innererror")
    result = inner.get("content_filter_result") if isinstance(inner, dict) else None
    filtered = [
        _category(name, verdict)
        for name, verdict in (result.items() if isinstance(result, dict) else ())
        if isinstance(verdict, dict) and verdict.get("filtered")
    ]
    return ", ".join(filtered) or "no category named"


def _category(name: str, verdict: dict[str, Any]) -> str:
    """A filtered category and its severity, or "detected" for the yes/no ones (jailbreak...)."""
    severity = verdict.get("severity")
    return f"{name} ({severity})" if isinstance(severity, str) else f"{name} (detected)"


def error_code(error: object) -> str | None:
    """The `code` of an error object, when it is a string (Azure's are numbers as strings)."""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


_HONOURED = {
    "messages": "`messages`; a tool turn as `tool_call_id`, an assistant's calls as `tool_calls`",
    "sampling.temperature": "`temperature` (else the `temperature` setting)",
    "sampling.top_p": "`top_p`",
    "sampling.max_tokens": f"`{MAX_TOKENS}` (reasoning models refuse `max_tokens`); a raw "
    "prompt's `max_tokens`",
    "sampling.seed": "`seed`",
    "sampling.stop": "`stop`",
    "sampling.frequency_penalty": "`frequency_penalty`",
    "sampling.presence_penalty": "`presence_penalty`",
    "tools": "`tools`, as function tools, each with `strict` when the tool asks",
    "tool_choice": "`tool_choice`: `auto`, `none`, `required`, or the named function (whose call "
    "OpenAI ends with `stop`: read as `tool_calls`)",
    "parallel_tool_calls": "`parallel_tool_calls`, when tools are offered",
    "response_format": "`response_format`: `json_object`, or `json_schema` with the schema",
    "signal_options.top_k": "`logprobs` and `top_logprobs`; the legacy API's `logprobs` for a raw prompt",
    "attachments": "images as `image_url` parts of the last user message; text as `text` parts",
    "raw_prompt": "POST /completions with `prompt`: the legacy API, no chat template",
    "user": "`user`, the end user for the vendor's abuse monitoring",
}

_REFUSED = {
    "sampling.top_k": "the API has no such parameter",
    "sampling.min_p": "the API has no such parameter",
    "sampling.repetition_penalty": "the API has no such parameter",
    "signal_options": "sampler stages or the full distribution: logprobs give the top 20 only",
    "signal_options.top_k": "over 20 (over 5 for a raw prompt), the API's limit",
    "response_format.grammar": "the API takes no GBNF grammar",
    "attachments": "anything but text and images; any on a raw prompt",
}

_UNRECORDED_CONTENT_FILTER = (
    "OpenAI documents `content_filter` but published no recording of it; the same reading "
    "is recorded for azure_openai (tests/vendors/azure_openai)"
)

OPENAI_WIRE = Wire(
    honoured=_HONOURED,
    refused=_REFUSED,
    finish=FINISH,
    errors={
        "400 invalid_request_error": "INVALID_ARGUMENT, with OpenAI's message",
        "401 invalid_api_key": "FAILED_PRECONDITION: the provider rejected the service's key "
        "(OpenAI's message, which echoes part of the key, is dropped)",
        "403 unsupported_country_region_territory": "FAILED_PRECONDITION, as a rejected credential",
        "404 model_not_found": "NOT_FOUND, with OpenAI's message",
        "429 rate_limit_exceeded": "RESOURCE_EXHAUSTED, with its Retry-After; retried after it",
        "429 insufficient_quota": "RESOURCE_EXHAUSTED, never retried: a spent quota does not come "
        "back in seconds",
        "500 server_error": "UNAVAILABLE, with OpenAI's message; retried",
        "503 overloaded": "UNAVAILABLE, with OpenAI's message; retried",
        "x-should-retry": "the vendor's word on retrying, above the status's: `false` is never "
        "retried, `true` is retried even a status that is final",
    },
    unrecorded={"finish:content_filter": _UNRECORDED_CONTENT_FILTER},
)

AZURE_OPENAI_WIRE = Wire(
    honoured={
        **_HONOURED,
        "model": "the deployment, in the URL (`/openai/deployments/{deployment}`), with the "
        "`api-version` query; another model is NOT_FOUND",
    },
    refused=_REFUSED,
    finish=FINISH,
    errors={
        "400 content_filter": "INVALID_ARGUMENT (content_filter): the prompt was filtered; the "
        "message names each filtered category and its severity",
        "401": "FAILED_PRECONDITION: the provider rejected the service's key",
        "404 DeploymentNotFound": "NOT_FOUND, with Azure's message",
        "404 Resource not found": "NOT_FOUND, with Azure's message (a wrong endpoint or `api-version`)",
        "429": "RESOURCE_EXHAUSTED, with its Retry-After; one over 30 s is not waited for",
        "500 server_error": "UNAVAILABLE, with Azure's message; retried",
    },
    unrecorded={
        "finish:function_call": "the deprecated `functions` API is never sent; the same reading "
        "is recorded for openai (tests/vendors/openai)",
    },
)

_EXTRAS = ("sampling.top_k", "sampling.min_p", "sampling.repetition_penalty")

# A server that speaks OpenAI's API (vLLM, llama.cpp, LM Studio, TGI, OpenRouter): OpenAI's
# reading of replies and errors, the old name of the token limit, and the sampling fields
# each kind of server reads (`flavour`).
OPENAI_COMPATIBLE_WIRE = Wire(
    honoured={
        **_HONOURED,
        "sampling.max_tokens": "`max_tokens`, the name every such server reads",
        "sampling.top_k, min_p, repetition_penalty": "by `flavour`: `top_k`, `min_p` and "
        "`repeat_penalty` (llamacpp, lmstudio) or `repetition_penalty` (vllm, openrouter)",
        "user": "`user`, for servers that read it",
    },
    refused={
        **{k: v for k, v in _REFUSED.items() if k not in _EXTRAS},
        "sampling.top_k, min_p, repetition_penalty": "for the `generic` and `tgi` flavours: "
        "a server not named may drop them without a word",
    },
    finish=FINISH,
    errors={name: what.replace("OpenAI's", "the server's") for name, what in OPENAI_WIRE.errors.items()},
    unrecorded={
        **OPENAI_WIRE.unrecorded,
        "the servers themselves": "each is its own program, not a vendor that publishes traffic: "
        "OpenAI's recordings are replayed to this kind too, and a real llama.cpp server answers "
        "tests/integration/test_openai_compatible.py",
    },
)
