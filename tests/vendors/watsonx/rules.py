"""What watsonx.ai's chat endpoints refuse before they generate, in watsonx's own words.

The replay gate (`tests.vendors.watsonx`) and the scripted fake (`tests.fakes.watsonx_server`)
both ask `refusal`, so that the two cannot hold different rules. The words are watsonx's as
recorded (README.md names where): `missing_query_parameter` from a logged reply of the
service, `invalid_request_entity` from quarkus-langchain4j's HttpErrorTest and IBM's own
tutorial, the body's shape (`errors`, `trace`, `status_code`) from IBM's Java SDK tests.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.responses import JSONResponse

CHAT_PATHS = {"/ml/v1/text/chat": "text-chat", "/ml/v1/text/chat_stream": "text-chat-stream"}


def error(
    status: int,
    code: str,
    message: str,
    path: str = "/ml/v1/text/chat",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """watsonx's error body: a list of errors, the request's trace id, and the status again."""
    more_info = f"https://cloud.ibm.com/apidocs/watsonx-ai#{CHAT_PATHS.get(path, 'text-chat')}"
    body = {
        "errors": [{"code": code, "message": message, "more_info": more_info}],
        "trace": uuid.uuid4().hex,
        "status_code": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def refusal(path: str, query: dict[str, str], body: Any) -> JSONResponse | None:
    """watsonx's answer to a chat call it refuses for its URL or body, or None if it takes it."""
    if not query.get("version"):
        return error(400, "missing_query_parameter", "Missing query parameter 'version'.", path)
    if not isinstance(body, dict) or not (body.get("project_id") or body.get("space_id")):
        message = "Missing either space_id or project_id or wml_instance_crn"
        return error(400, "invalid_request_entity", message, path)
    return None
