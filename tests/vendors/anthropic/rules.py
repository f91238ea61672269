"""What Anthropic's Messages API refuses before a model runs, in its own words: a missing
or unknown key, a missing `anthropic-version`, and the body rules it checks first. The
vendor gate and the scripted fake (tests/fakes/anthropic_server.py) both ask these, so the
two refuse the same requests. README.md says where each message was seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

# Anthropic's words, exactly (see README.md).
KEY_REQUIRED = "x-api-key header is required"
KEY_UNKNOWN = "invalid x-api-key"
VERSION_REQUIRED = "anthropic-version: header is required"
VERSION_UNKNOWN = 'anthropic-version: "{}" is not a valid version'
SAMPLING_EXCLUSIVE = "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
TOOLS_REQUIRED = "Requests which include `tool_use` or `tool_result` blocks must define tools."

# The versions the versioning page lists: 2023-06-01 is current, 2023-01-01 the first.
VERSIONS = ("2023-06-01", "2023-01-01")
# The request id the errors page shows as its example: every refusal here carries one, as
# Anthropic's do.
REQUEST_ID = "req_018EeWyXxfu5pfWkrYcMdjWG"


def anthropic_error(status: int, kind: str, message: str) -> JSONResponse:
    """An error as the Messages API sends it: `{"type": "error", "error": {...}, "request_id"}`."""
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": REQUEST_ID}
    return JSONResponse(body, status_code=status, headers={"request-id": REQUEST_ID})


def header_refusal(headers: Mapping[str, str], key: str | None = None) -> JSONResponse | None:
    """Anthropic's answer to a call without a key it takes or without `anthropic-version`, or
    None. `headers` in lower case; `key`, the one key the server knows (None: any key)."""
    presented = headers.get("x-api-key", "")
    if not presented:
        return anthropic_error(401, "authentication_error", KEY_REQUIRED)
    if key is not None and presented != key:
        return anthropic_error(401, "authentication_error", KEY_UNKNOWN)
    version = headers.get("anthropic-version", "")
    if not version:
        return anthropic_error(400, "invalid_request_error", VERSION_REQUIRED)
    if version not in VERSIONS:
        return anthropic_error(400, "invalid_request_error", VERSION_UNKNOWN.format(version))
    return None


def body_refusal(body: Any) -> JSONResponse | None:
    """Anthropic's 400 for a Messages body it refuses, or None."""
    if not isinstance(body, dict):
        return None
    if body.get("temperature") is not None and body.get("top_p") is not None:
        # Newer models (Sonnet 4.5 and later, Haiku 4.5) refuse the two together.
        return anthropic_error(400, "invalid_request_error", SAMPLING_EXCLUSIVE)
    if _has_tool_blocks(body) and not body.get("tools"):
        return anthropic_error(400, "invalid_request_error", TOOLS_REQUIRED)
    return None


def _has_tool_blocks(body: dict[str, Any]) -> bool:
    blocks = [b for m in body.get("messages") or [] for b in _content(m)]
    return any(b.get("type") in ("tool_use", "tool_result") for b in blocks)


def _content(message: Any) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
