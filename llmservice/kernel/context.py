"""What one request carries across the shim, the service and the provider calls.

Two context variables, set once where a request enters (the shim's middleware, the gRPC
server's interceptor) and read where it leaves or logs: asyncio copies them into every
task the request starts, so nothing passes them by hand.

- `REQUEST_ID`: the request's id, put into every log record.
- `OUTGOING`: the headers the next hop gets (x-request-id, and traceparent when tracing
  is on): the shim sends them as gRPC metadata, the remote backends as HTTP headers.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
Headers = tuple[tuple[str, str], ...]

REQUEST_ID: ContextVar[str] = ContextVar("llmservice_request_id", default="")
OUTGOING: ContextVar[Headers] = ContextVar("llmservice_outgoing_headers", default=())

# An id a caller sends is kept only if it is short and plain: it goes into log lines and
# headers, so it must not be able to forge a line or carry a payload.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(value: str | None) -> str:
    """The caller's id when it is acceptable, else a new one."""
    if value and _ACCEPTABLE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def begin(request_id: str, *extra: tuple[str, str]) -> None:
    """Make `request_id` (and `extra` headers for the next hop) this task's from here on."""
    REQUEST_ID.set(request_id)
    OUTGOING.set(((REQUEST_ID_HEADER, request_id), *extra))


def upstream_headers() -> Headers:
    """OUTGOING for a provider's HTTP call: the request id only when it is a UUID.

    Some OpenAI-compatible servers refuse a request whose x-request-id is not a UUID
    (llama-cpp-python's server answers 400), so a caller's own id of another shape
    stays on this side (in the logs and trailers) and the upstream call goes without.
    """
    return tuple((k, v) for k, v in OUTGOING.get() if k != REQUEST_ID_HEADER or _is_uuid(v))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def request_trailer() -> Headers:
    """The gRPC trailer that tells the caller the call's request id."""
    rid = REQUEST_ID.get()
    return ((REQUEST_ID_HEADER, rid),) if rid else ()
