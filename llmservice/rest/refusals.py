"""A refusal made before a route runs (rest.gate), in the shape of the surface the path is on.

Once a route runs, its own error handling shapes what it raises; the gate answers some
requests before any route is chosen, so it picks the shape from the path as the routers
are mounted: Anthropic's under /v1/messages, the documented `{"detail", "param"}` under
/llmchat and /v1/llmchat, OpenAI's everywhere else.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response

from llmservice.rest.anthropic.errors import from_api_error
from llmservice.rest.errors import APIError

_LLMCHAT = ("/llmchat/", "/v1/llmchat/")


def refusal(path: str, status: int, message: str, kind: str) -> Response:
    error = APIError(status, message, kind)
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return from_api_error(error).response()
    if path.startswith(_LLMCHAT):
        return JSONResponse({"detail": message, "param": None}, status_code=status)
    return error.response()
