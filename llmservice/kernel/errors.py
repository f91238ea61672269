"""The one error hierarchy of llmservice.

Core code and providers raise these; the gRPC server maps them to status codes in
one place (`llmservice.grpc_api.status`), and the HTTP shim maps gRPC status to HTTP.
Nothing maps our errors by their message text (a provider reads its vendor's words only
where the vendor sends no code, e.g. Ollama's pull of a model that does not exist).

    LLMServiceError                  INTERNAL           anything else
    ├── InvalidRequest               INVALID_ARGUMENT   bad input, unsupported parameter
    │   └── ContentFiltered                                 a provider's filter refused the prompt
    ├── Unauthenticated              UNAUTHENTICATED
    ├── PermissionDenied             PERMISSION_DENIED
    ├── NotFound                     NOT_FOUND          model, provider or session
    ├── AlreadyExists                ALREADY_EXISTS     a name already taken (a provider registered)
    ├── ResourceExhausted            RESOURCE_EXHAUSTED queue full, rate limit, budget
    │   ├── RateLimited                                     requests or tokens per minute
    │   └── BudgetExhausted                                 a principal's budget is spent
    ├── ProviderAuthFailed           FAILED_PRECONDITION provider rejected credentials or account
    ├── Unavailable                  UNAVAILABLE        provider down, service draining
    ├── DeadlineExceeded             DEADLINE_EXCEEDED  deadline or provider timeout
    │   └── ProviderTimeout                                 before the answer began: retried
    └── Cancelled                    CANCELLED          the caller went away
"""

from __future__ import annotations


class LLMServiceError(Exception):
    """Base of every error llmservice raises on purpose; unexpected ones map to INTERNAL."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.provider = ""  # the provider whose call failed, once routed (for metrics)
        # The upstream's own word on retrying (OpenAI's and Anthropic's `x-should-retry`):
        # True retries even what is final by its kind, False never retries; None: by its kind.
        self.should_retry: bool | None = None


class InvalidRequest(LLMServiceError):
    """The request is malformed or asks for something that would not be honoured."""

    def __init__(self, field: str, problem: str, *, message: str = "") -> None:
        """The message is "field: problem", or `message` when a sentence names the field itself."""
        super().__init__(message or f"{field}: {problem}")
        self.field = field


class ContentFiltered(InvalidRequest):
    """A provider's content filter refused the prompt; the message names the category."""

    kind = "content_filter"


class Unauthenticated(LLMServiceError):
    """No credentials, or credentials that are not valid."""


class PermissionDenied(LLMServiceError):
    """The caller may not use this resource."""


class NotFound(LLMServiceError):
    """A model, provider or session that does not exist (or is hidden from the caller)."""


class AlreadyExists(LLMServiceError):
    """A name that is already taken (registering a provider under a configured one's)."""


class ResourceExhausted(LLMServiceError):
    """Queue full, rate limit or budget reached; `retry_after_s` hints when to retry."""

    kind = ""  # sent as llm-error-kind when set: which limit it was


class RateLimited(ResourceExhausted):
    """A principal's requests or tokens per minute are used up for now."""

    kind = "rate_limit_exceeded"


class BudgetExhausted(ResourceExhausted):
    """A principal's budget for the period is spent."""

    kind = "insufficient_quota"


class ProviderAuthFailed(LLMServiceError):
    """A provider rejected the service's credentials; names the provider, never the key."""


class Unavailable(LLMServiceError):
    """A provider is down, or this service is draining."""


class DeadlineExceeded(LLMServiceError):
    """The request's deadline passed, or a provider timed out."""


class ProviderTimeout(DeadlineExceeded):
    """A provider timed out before its answer began (no connection in time, HTTP 504 or 408):
    another try may work, so it is retried like a 5xx."""


class Cancelled(LLMServiceError):
    """The caller cancelled the request."""
