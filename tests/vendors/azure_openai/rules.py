"""What Azure OpenAI refuses before a model runs, in its own words: a call without the
`api-version` query, without its `api-key` or with a key it does not know, to a deployment
it does not have; and, for a reasoning model's deployment, OpenAI's body rule (`max_tokens`),
which Azure answers in OpenAI's words. The vendor gate and the scripted fake
(tests/fakes/openai_server.py) both ask these. README.md says where each was seen.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from ..openai.rules import body_refusal

__all__ = ["KEY_REFUSED", "body_refusal", "request_refusal"]

# Azure's words, exactly (see README.md). Its 401 and 404 carry the status as a string code.
KEY_REFUSED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
RESOURCE_NOT_FOUND = "Resource not found"
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within the last "
    "5 minutes, please wait a moment and try again."
)


def azure_error(status: int, code: str, message: str) -> JSONResponse:
    """An error as Azure's gateway sends it: `{"error": {"code", "message"}}`."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def request_refusal(
    query: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    key: str | None = None,
    deployment: str | None = None,
    asked: str = "",
) -> JSONResponse | None:
    """Azure's answer to a call it refuses before it reads the body, or None: no `api-version`
    (404), no `api-key` or an unknown one (401), a deployment it does not have (404).
    `headers` in lower case; `key` and `deployment`, the ones the resource has (None: any);
    `asked`, the deployment the path names."""
    if not query.get("api-version"):
        return azure_error(404, "404", RESOURCE_NOT_FOUND)
    presented = headers.get("api-key", "")
    if not presented or (key is not None and presented != key):
        return azure_error(401, "401", KEY_REFUSED)
    if deployment is not None and asked != deployment:
        return azure_error(404, "DeploymentNotFound", DEPLOYMENT_NOT_FOUND)
    return None
