"""gRPC status to HTTP, in OpenAI's error shape: the one place this mapping lives.

gRPC                  HTTP  OpenAI error type
INVALID_ARGUMENT      400   invalid_request_error
UNAUTHENTICATED       401   authentication_error
PERMISSION_DENIED     403   permission_error
NOT_FOUND             404   not_found_error (model_not_found for models)
RESOURCE_EXHAUSTED    429   rate_limit_error (Retry-After from the status)
FAILED_PRECONDITION   502   upstream_error (a provider rejected our credentials)
UNAVAILABLE           503   service_unavailable
DEADLINE_EXCEEDED     504   timeout
CANCELLED             499   cancelled
anything else         500   internal_error
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from fastapi.responses import JSONResponse

_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (502, "upstream_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
}
RETRY_AFTER_KEY = "retry-after"


class APIError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
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
    param = details.split(":", 1)[0] if status == 400 and ":" in details else None
    code = "model_not_found" if status == 404 and details.startswith("model ") else None
    trailers = error.trailing_metadata() or ()
    retry_after = next((str(v) for k, v in trailers if k == RETRY_AFTER_KEY), None)
    if retry_after is not None:
        retry_after = str(max(1, round(float(retry_after))))
    return APIError(status, details, kind, param=param, code=code, retry_after=retry_after)
