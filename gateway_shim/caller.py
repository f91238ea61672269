"""The caller's credentials, passed to the service as they came: the service decides."""

from __future__ import annotations

from fastapi import Request

Metadata = tuple[tuple[str, str], ...]


def caller_metadata(request: Request) -> Metadata:
    authorization = request.headers.get("authorization")
    return (("authorization", authorization),) if authorization else ()
