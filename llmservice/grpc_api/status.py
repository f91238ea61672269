"""Domain errors to gRPC status: the one place this mapping lives.

The details text is for people. What a client acts on travels as structured facts in
the trailing metadata, so no client has to read the text:

    retry-after       seconds to wait before retrying (RESOURCE_EXHAUSTED, UNAVAILABLE ...)
    llm-error-param   the request field at fault (INVALID_ARGUMENT), e.g. messages[1].role
    llm-error-kind    what was not found, e.g. model_not_found (NOT_FOUND), or which limit
                      was reached: rate_limit_exceeded, insufficient_quota (RESOURCE_EXHAUSTED)

Every servicer method is decorated with `errors_to_status`, so a handler raises domain
errors and never catches them; the in-process channel calls the same decorated methods.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc

from llmservice.kernel import errors
from llmservice.kernel.context import request_trailer

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after"
PARAM_KEY = "llm-error-param"
KIND_KEY = "llm-error-kind"
MODEL_NOT_FOUND = "model_not_found"

Trailers = tuple[tuple[str, str], ...]
Context = grpc.aio.ServicerContext[Any, Any]
_Method = TypeVar("_Method", bound=Callable[..., Any])

_CODES: dict[type[errors.LLMServiceError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ProviderAuthFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def to_status(exc: BaseException, not_found: str | None = None) -> tuple[grpc.StatusCode, str, Trailers]:
    """(code, details, trailing metadata) for an exception raised while serving a call.

    `not_found` is the kind of thing a NotFound from this call is about (the calling
    servicer knows: a chat call looks up a model), sent as llm-error-kind.
    """
    if isinstance(exc, errors.LLMServiceError):
        return _code(exc), exc.message, _facts(exc, not_found)
    log.error("internal error while serving a call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see the service log", ()


def code_name(exc: BaseException) -> str:
    """The status code name `to_status` gives `exc` (for metrics; logs nothing)."""
    return _code(exc).name


def _code(exc: BaseException) -> grpc.StatusCode:
    return next((_CODES[t] for t in type(exc).__mro__ if t in _CODES), grpc.StatusCode.INTERNAL)


def _facts(exc: errors.LLMServiceError, not_found: str | None) -> Trailers:
    facts: list[tuple[str, str]] = []
    if exc.retry_after_s is not None:
        facts.append((RETRY_AFTER_KEY, f"{exc.retry_after_s:g}"))
    if isinstance(exc, errors.InvalidRequest) and _sendable(exc.field):
        facts.append((PARAM_KEY, exc.field))
    if isinstance(exc, errors.NotFound) and not_found:
        facts.append((KIND_KEY, not_found))
    if isinstance(exc, errors.ResourceExhausted | errors.ContentFiltered) and exc.kind:
        facts.append((KIND_KEY, exc.kind))
    return tuple(facts)


def _sendable(value: str) -> bool:
    """gRPC metadata values are printable ASCII; anything else is left to the details text."""
    return bool(value) and value.isascii() and value.isprintable()


async def abort(context: Context, exc: Exception, not_found: str | None = None) -> NoReturn:
    """End the call with the status for `exc`, and its structured facts and request id in the trailers."""
    code, details, trailers = to_status(exc, not_found)
    log.info("call failed: %s %s", code.name, details)
    context.set_trailing_metadata((*trailers, *request_trailer()))
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker


def errors_to_status(not_found: str | None = None) -> Callable[[_Method], _Method]:
    """Decorate a servicer method, a coroutine or an async generator: an exception it raises
    ends the call through `abort` (a stream's, after the replies it has sent).

    Cancellation (asyncio.CancelledError) passes through untouched. `not_found` as in `to_status`.
    """

    def decorate(method: _Method) -> _Method:
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def streaming(self: object, request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    # aclosing: closing this stream closes the method's at once, not when collected.
                    async with contextlib.aclosing(method(self, request, context)) as replies:
                        async for reply in replies:
                            yield reply
                except Exception as exc:
                    await abort(context, exc, not_found)

            return cast(_Method, streaming)

        @functools.wraps(method)
        async def unary(self: object, request: Any, context: Context) -> Any:
            try:
                return await method(self, request, context)
            except Exception as exc:
                await abort(context, exc, not_found)

        return cast(_Method, unary)

    return decorate
