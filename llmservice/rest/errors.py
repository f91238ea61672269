"""gRPC status to HTTP, in OpenAI's error shape: the one place this mapping lives.

gRPC                  HTTP  OpenAI error type
INVALID_ARGUMENT      400   invalid_request_error
UNAUTHENTICATED       401   authentication_error
PERMISSION_DENIED     403   permission_error
NOT_FOUND             404   not_found_error (model_not_found for models)
ALREADY_EXISTS        409   conflict_error
RESOURCE_EXHAUSTED    429   rate_limit_error (Retry-After from the status); insufficient_quota
                            for a spent budget
FAILED_PRECONDITION   502   upstream_error (a provider rejected our credentials)
UNAVAILABLE           503   service_unavailable
DEADLINE_EXCEEDED     504   timeout
CANCELLED             499   cancelled
anything else         500   internal_error

The OpenAI `param`, `code` and Retry-After come from the structured facts the service
sends in the trailing metadata (llmservice.grpc_api.status), never from the details text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (502, "upstream_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
}
# The trailer keys of llmservice.grpc_api.status (the shim does not import the service).
RETRY_AFTER_KEY = "retry-after"
PARAM_KEY = "llm-error-param"
KIND_KEY = "llm-error-kind"


class APIError(HTTPException):
    """An error to answer in OpenAI's shape (each surface's handler puts it in its own).

    An HTTPException so that FastAPI passes one raised while it reads a body (rest.gate's
    413) on as it is, rather than as its own "error parsing the body"; the app's handler
    for APIError, the more specific class, is the one that answers it.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.retry_after:
            headers["Retry-After"] = self.retry_after
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def invalid(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", "invalid_request_error", param=param)


def from_grpc(error: grpc.aio.AioRpcError) -> APIError:
    status, kind = _HTTP.get(error.code(), (500, "internal_error"))
    details = error.details() or error.code().name.lower()
    facts = {k: v for k, v in error.trailing_metadata() or () if isinstance(v, str)}
    code = facts.get(KIND_KEY)
    param = facts.get(PARAM_KEY) or ("model" if code == "model_not_found" else None)
    if code == "insufficient_quota":  # a spent budget: OpenAI's type for it, so SDK users can tell
        kind = code
    return APIError(status, details, kind, param=param, code=code, retry_after=_seconds(facts))


def _seconds(facts: Mapping[str, str]) -> str | None:
    """Retry-After in whole seconds (at least 1), from the service's hint."""
    try:
        return str(max(1, round(float(facts[RETRY_AFTER_KEY]))))
    except (KeyError, ValueError, OverflowError):
        return None
