"""Domain errors to gRPC status: the one place this mapping lives."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from llmservice import errors

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after"

_CODES: dict[type[errors.LLMServiceError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ProviderAuthFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, details, trailing metadata) for an exception raised while serving a call."""
    if isinstance(exc, errors.LLMServiceError):
        code = next((_CODES[t] for t in type(exc).__mro__ if t in _CODES), grpc.StatusCode.INTERNAL)
        trailers = ((RETRY_AFTER_KEY, f"{exc.retry_after_s:g}"),) if exc.retry_after_s is not None else ()
        return code, exc.message, trailers
    log.error("internal error while serving a call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the service log", ()


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """End the call with the status for `exc` (and its retry hint in the trailers)."""
    code, details, trailers = to_status(exc)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker
