"""How Bedrock's Converse API reads back: its stop reasons, its errors (HTTP and in-stream),
and the wire facts docs/providers.md prints. No AWS SDK here: the entry imports it to
list the kinds, and the provider reads its mappings from it, so the two cannot drift.

The names are botocore's service model (`bedrock-runtime/2023-09-30/service-2.json`):
`StopReason`, each operation's `errors`, and `ConverseStreamOutput`'s exception members.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llmservice.kernel.errors import (
    InvalidRequest,
    LLMServiceError,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import FIRST_CALL_ONLY, Wire
from llmservice.kernel.types import FinishReason
from llmservice.providers.remote.http_errors import from_status, redact

# Every stopReason of the service model but the two malformed ones, which are failures.
FINISH: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "guardrail_intervened": FinishReason.CONTENT_FILTER,
    "content_filtered": FinishReason.CONTENT_FILTER,
}

# Stop reasons that say the model's output is unusable: a reply that ends so is no answer,
# and reading it as a STOP would hand the caller a broken tool call or text as a success.
MALFORMED: Mapping[str, str] = {
    "malformed_tool_use": "the model produced a tool call that is not valid",
    "malformed_model_output": "the model produced output that is not valid",
}

# ConverseStream's exception members (`:message-type: exception`, `:exception-type`), by
# what a caller gets. modelTimeoutException is InvokeModelWithResponseStream's member, not
# ConverseStream's, but the same runtime sends it: read, it costs nothing.
STREAM_EXCEPTIONS: Mapping[str, type[LLMServiceError]] = {
    "validationException": InvalidRequest,
    "throttlingException": ResourceExhausted,
    "modelStreamErrorException": Unavailable,
    "internalServerException": Unavailable,
    "serviceUnavailableException": Unavailable,
    "modelTimeoutException": ProviderTimeout,
}

# AWS's common errors for credentials it does not take (not in the service model: every
# AWS service answers them).
_CREDENTIAL_ERRORS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
    }
)

_GRPC = {
    InvalidRequest: "INVALID_ARGUMENT",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Unavailable: "UNAVAILABLE",
    ProviderTimeout: "DEADLINE_EXCEEDED",
}


def stop_error(provider: str, reason: str) -> Unavailable | None:
    """The error a malformed stopReason is, or None for every other reason."""
    if reason not in MALFORMED:
        return None
    return Unavailable(f"provider {provider} failed: {MALFORMED[reason]} (stopReason {reason})")


def stream_error(provider: str, kind: str, message: str, secrets: Iterable[str] = ()) -> LLMServiceError:
    """An exception or error message inside a ConverseStream, by its type: a validation
    error is the request's fault, throttling a rate limit, the rest the provider's."""
    text = redact(f"{kind}: {message}" if message else kind, secrets)
    error_class = STREAM_EXCEPTIONS.get(kind, Unavailable)
    if error_class is InvalidRequest:
        return InvalidRequest("request", f"provider {provider} refused it midway: {text}")
    if error_class is ResourceExhausted:
        return ResourceExhausted(f"provider {provider} is rate limiting: {text}")
    if error_class is ProviderTimeout:
        return ProviderTimeout(f"provider {provider} timed out: {text}")
    return Unavailable(f"provider {provider} failed midway: {text}")


def http_error(
    provider: str,
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str],
    *,
    model: str,
    secrets: Iterable[str] = (),
) -> LLMServiceError:
    """The domain error for a Converse call AWS refused, by `x-amzn-ErrorType` first (two
    429s and two 403s mean different things), then by status."""
    if error_type == "AccessDeniedException":
        # The credentials were good (the signature passed); the account may not use the model.
        # AWS's message names the IAM principal's ARN: the operator's log gets it, not the caller.
        return ProviderAuthFailed(
            f"provider {provider} was denied model {model!r} (AccessDeniedException): usually "
            "the model access is not granted for this account and region (Bedrock console, "
            "Model access), or the IAM policy of the configured credentials does not allow "
            "bedrock:InvokeModel (and bedrock:InvokeModelWithResponseStream to stream) on it"
        )
    if error_type in _CREDENTIAL_ERRORS or status == 401:
        return ProviderAuthFailed(
            f"provider {provider} rejected the service's AWS credentials "
            f"({error_type or f'HTTP {status}'}); check the configured access key, secret "
            "and session token, or the role"
        )
    text = redact(f"{error_type}: {message}" if error_type else message, secrets)
    if error_type == "ModelNotReadyException":  # a 429 that is no rate limit: the model is loading
        return Unavailable(f"provider {provider} has model {model!r} not ready yet: {text}")
    if status == 424:  # ModelErrorException: the model failed, not the request
        return Unavailable(f"provider {provider} failed: {text}")
    return from_status(provider, status, text, headers, model=model, secrets=secrets)


_STREAM_NOTES = {"modelTimeoutException": " (InvokeModelWithResponseStream's member; read here too)"}


def _stream_rows() -> dict[str, str]:
    return {
        f"stream {kind}": f"{_GRPC[error_class]}, AWS's message"
        + ("; retried before the first token" if error_class is not InvalidRequest else "")
        + _STREAM_NOTES.get(kind, "")
        for kind, error_class in STREAM_EXCEPTIONS.items()
    }


ERRORS: Mapping[str, str] = {
    "400 ValidationException": "INVALID_ARGUMENT, AWS's message",
    "403 AccessDeniedException": (
        "FAILED_PRECONDITION, naming the model access grant and the IAM policy "
        "(AWS's message, which names the IAM principal, is logged, not sent)"
    ),
    "403 UnrecognizedClientException, InvalidSignatureException, ExpiredTokenException": (
        "FAILED_PRECONDITION, check the configured credentials; AWS's message is not sent"
    ),
    "404 ResourceNotFoundException": "NOT_FOUND, AWS's message (e.g. a model at its end of life)",
    "408 ModelTimeoutException": "DEADLINE_EXCEEDED, retried",
    "424 ModelErrorException": "UNAVAILABLE, AWS's message, retried",
    "429 ThrottlingException": "RESOURCE_EXHAUSTED, AWS's message, retried",
    "429 ModelNotReadyException": "UNAVAILABLE (the model is loading, no rate limit), retried",
    "500 InternalServerException": "UNAVAILABLE, retried",
    "503 ServiceUnavailableException": "UNAVAILABLE, retried",
    **_stream_rows(),
    "stream error message": (
        "UNAVAILABLE, its :error-code and :error-message (`:message-type: error`); retried "
        "before the first token"
    ),
    **{
        f"stopReason {reason}": f"UNAVAILABLE, {what}; retried (a stream only before its first token)"
        for reason, what in MALFORMED.items()
    },
}

WIRE = Wire(
    honoured={
        "messages": "`messages` (tool results as user turns, same-role turns merged), system ones `system`",
        "sampling.max_tokens": "`inferenceConfig.maxTokens` (else the deployment's `max_tokens`)",
        "sampling.temperature": "`inferenceConfig.temperature` (else the deployment's `temperature`)",
        "sampling.top_p": "`inferenceConfig.topP`",
        "sampling.stop": "`inferenceConfig.stopSequences`",
        "tools": (
            "`toolConfig.tools[].toolSpec`; when none are offered but the history holds tool "
            "turns, the tools it calls are declared with a permissive schema (Bedrock refuses "
            "tool turns without a toolConfig; it has no `none`), so a call the model makes to "
            "one anyway comes back as a call"
        ),
        "tool_choice": (
            "`toolConfig.toolChoice`: auto `auto`, required `any`, function `tool`; none: no "
            "toolConfig, unless the history holds tool turns (then the tools go without a toolChoice)"
        ),
        "attachments": "images as `image` blocks (png, jpeg, gif, webp), text ones as text blocks",
        "user, cache_salt": "not sent: Converse has no such field",
        "parallel_tool_calls": FIRST_CALL_ONLY,
    },
    refused={
        "sampling.seed, top_k, min_p, repetition_penalty": "no such parameter in the Converse API",
        "sampling.frequency_penalty, presence_penalty": "no such parameter in the Converse API",
        "signals": "Converse returns no per-token probabilities",
        "constraint": "Converse has no response format (a forced tool is the way to structured output)",
    },
    finish=FINISH,
    errors=ERRORS,
)
