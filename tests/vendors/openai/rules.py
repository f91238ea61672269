"""What OpenAI's Chat Completions API refuses before a model runs, in its own words: a call
without a Bearer key or with a key it does not know, and `max_tokens` sent to a reasoning
model. The vendor gate and the scripted fake (tests/fakes/openai_server.py) both ask these,
so the two refuse the same requests. Azure OpenAI answers the body rule in the same words
(tests/vendors/azure_openai/rules.py asks it too). README.md says where each was seen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

# OpenAI's words, exactly (see README.md).
KEY_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) "
    "if you're accessing the API from your browser and are prompted for a username and password. You "
    "can obtain an API key from https://platform.openai.com/account/api-keys."
)
KEY_INCORRECT = (
    "Incorrect API key provided: {}. "
    "You can find your API key at https://platform.openai.com/account/api-keys."
)
MAX_TOKENS_UNSUPPORTED = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)

# The reasoning models, which take `max_completion_tokens` only: o1, o3, o4-mini, gpt-5 and
# their dated and sized variants (o1-mini, o3-2025-04-16, gpt-5-nano...).
REASONING_MODEL = re.compile(r"^(o\d+|gpt-5)(\b|[-.])")


def openai_error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None,
) -> JSONResponse:
    """An error as the API sends it: `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def masked(key: str) -> str:
    """A key as OpenAI's 401 shows it: its first 8 and last 4 characters, stars between."""
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else key


def header_refusal(headers: Mapping[str, str], key: str | None = None) -> JSONResponse | None:
    """OpenAI's 401 for a call without `Authorization: Bearer <key>` or with a key it does not
    know, or None. `headers` in lower case; `key`, the one key the server knows (None: any)."""
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return openai_error(401, KEY_MISSING, code=None)
    if key is not None and presented != key:
        return openai_error(401, KEY_INCORRECT.format(masked(presented)), code="invalid_api_key")
    return None


def body_refusal(body: Any) -> JSONResponse | None:
    """The API's 400 for a chat body it refuses, or None: a reasoning model is sent `max_tokens`."""
    if not isinstance(body, dict) or "max_tokens" not in body:
        return None
    if REASONING_MODEL.match(str(body.get("model") or "")):
        return openai_error(400, MAX_TOKENS_UNSUPPORTED, param="max_tokens", code="unsupported_parameter")
    return None
