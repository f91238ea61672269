"""The caller's credentials, passed to the service as they came: the service decides.

With them go the request's id and trace context (`request_context`).
"""

from __future__ import annotations

from fastapi import Request

from llmservice.kernel.context import OUTGOING

Metadata = tuple[tuple[str, str], ...]


# The service's metrics count calls by the surface they came through (llm-surface).
_FROM_HTTP = (("llm-surface", "http"),)


def caller_metadata(request: Request) -> Metadata:
    authorization = request.headers.get("authorization")
    sent = (("authorization", authorization), *_FROM_HTTP) if authorization else _FROM_HTTP
    return (*sent, *OUTGOING.get())
