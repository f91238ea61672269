"""The caller's credentials, passed to the service as they came: the service decides.

With them go the request's id and trace context (`request_context`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request

from llmservice.kernel.context import OUTGOING

Metadata = tuple[tuple[str, str], ...]


# The service's metrics count calls by the surface they came through (llm-surface).
_FROM_HTTP = (("llm-surface", "http"),)


def caller_metadata(request: Request) -> Metadata:
    return metadata_for(request.headers.get("authorization"))


def api_key_caller_metadata(request: Request) -> Metadata:
    """As caller_metadata, for clients that may send their key as Anthropic's do (`x-api-key:
    <key>`): it goes on as `authorization: Bearer <key>`. An authorization header wins."""
    return metadata_for(presented_authorization(request.headers))


def presented_authorization(headers: Mapping[str, str]) -> str | None:
    """The caller's `authorization`, or its Anthropic-style `x-api-key` as a bearer token."""
    authorization = headers.get("authorization")
    if not authorization and (key := headers.get("x-api-key")):
        authorization = f"Bearer {key}"
    return authorization


def metadata_for(authorization: str | None) -> Metadata:
    """The metadata that passes `authorization` (when there is one) on to the service."""
    sent = (("authorization", authorization), *_FROM_HTTP) if authorization else _FROM_HTTP
    return (*sent, *OUTGOING.get())
