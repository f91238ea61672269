"""Errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}, "request_id"}`.

A gRPC status first becomes the shim's APIError (llmservice.rest.errors, the one mapping
of status to HTTP), which this then puts in Anthropic's terms, as Anthropic answers:

gRPC                  shim's APIError   here  Anthropic error type
INVALID_ARGUMENT      400               400   invalid_request_error
UNAUTHENTICATED       401               401   authentication_error
PERMISSION_DENIED     403               403   permission_error
NOT_FOUND             404               404   not_found_error
(a body too large)    413               413   request_too_large (none is refused so today)
RESOURCE_EXHAUSTED    429               429   rate_limit_error (a spent budget too), Retry-After kept
FAILED_PRECONDITION   502               500   api_error (a provider rejected the service's credentials)
UNAVAILABLE           503               529   overloaded_error, Retry-After kept
DEADLINE_EXCEEDED     504               504   timeout_error
CANCELLED             499               499   api_error (the client is gone; nobody reads it)
anything else         500               500   api_error

Anthropic's clients read the status (the SDK picks its exception class from it: 529 is
OverloadedError) and error.type; the message is the service's own words, with the
parameter named first where the service named one ("max_tokens: Field required").
"""

from __future__ import annotations

import grpc
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from llmservice.kernel.context import REQUEST_ID
from llmservice.rest.anthropic import protocol as an
from llmservice.rest.errors import APIError, from_grpc
from llmservice.rest.params import validation_error

# The shim's HTTP status -> Anthropic's (status, error type).
_ANTHROPIC: dict[int, tuple[int, an.ErrorType]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    499: (499, "api_error"),
    502: (500, "api_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
}


class AnthropicError(Exception):
    """An error to answer in Anthropic's shape."""

    def __init__(
        self, status: int, type_: an.ErrorType, message: str, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after

    def body(self) -> an.AnthropicErrorResponse:
        detail = an.ErrorObject(type=self.type, message=self.message)
        return an.AnthropicErrorResponse(type="error", error=detail, request_id=REQUEST_ID.get() or None)

    def response(self) -> Response:
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return Response(an.dump(self.body()), self.status, headers, media_type="application/json")


def from_api_error(error: APIError) -> AnthropicError:
    status, kind = _ANTHROPIC.get(error.status, (500, "api_error"))
    return AnthropicError(status, kind, error.message, error.retry_after)


def as_anthropic(exc: Exception) -> AnthropicError | None:
    """The Anthropic error for what a handler raised, None for what is no request's fault."""
    if isinstance(exc, AnthropicError):
        return exc
    if isinstance(exc, APIError):
        return from_api_error(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_api_error(from_grpc(exc))
    if isinstance(exc, RequestValidationError):
        return from_api_error(validation_error(exc))
    return None
