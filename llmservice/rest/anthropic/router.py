"""The Anthropic routes: thin handlers over AnthropicServing, mounted under /v1.

Every error of these routes is in Anthropic's shape (llmservice.rest.anthropic.errors),
whatever raised it: the app's own handlers answer in OpenAI's. Callers authenticate as
Anthropic's clients do, with `x-api-key` or `authorization: Bearer`; the
`anthropic-version` and `anthropic-beta` headers are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from llmservice.rest.anthropic import protocol as an
from llmservice.rest.anthropic.errors import as_anthropic
from llmservice.rest.anthropic.serving import AnthropicServing
from llmservice.rest.body import parse_body
from llmservice.rest.caller import api_key_caller_metadata

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": an.AnthropicErrorResponse} for code in (400, 401, 403, 404, 413, 429, 499, 500, 504, 529)
}
EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `stream: true`, an SSE stream of `event: message_start | "
        "content_block_start | content_block_delta | content_block_stop | message_delta | "
        "message_stop | error` frames.",
        "content": {"text/event-stream": {}},
    }
}


def _body_doc(model: type[an.CountTokensRequest]) -> dict[str, Any]:
    """The body, parsed by its handler rather than by FastAPI, in the document: its schema
    inline, with its definitions in place (none is recursive), so that no component of
    these names meets the OpenAI surface's."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(
                    {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
                )
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


class _AnthropicRoute(APIRoute):
    """A route whose errors are answered in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = as_anthropic(exc)
                if error is None:
                    raise
                return error.response()

        return route


def router() -> APIRouter:
    """The routes; each calls the app's LLMService stub (made by its lifespan) in app.state."""
    api = APIRouter(tags=["anthropic"], responses=ERRORS, route_class=_AnthropicRoute)

    @api.post(
        "/messages",
        response_model=an.Message,
        responses=EVENTS,
        summary="Create a message (Anthropic's Messages API)",
        openapi_extra=_body_doc(an.MessageCreateRequest),
    )
    async def messages(request: Request) -> Response:
        body = parse_body(an.MessageCreateRequest, await request.body())
        return await _serving(request).messages(body, request, api_key_caller_metadata(request))

    @api.post(
        "/messages/count_tokens",
        response_model=an.MessageTokensCount,
        summary="Count the tokens of a message's prompt (Anthropic's Messages API)",
        openapi_extra=_body_doc(an.CountTokensRequest),
    )
    async def count_tokens(request: Request) -> Response:
        body = parse_body(an.CountTokensRequest, await request.body())
        return await _serving(request).count_tokens(body, request, api_key_caller_metadata(request))

    return api


def _serving(request: Request) -> AnthropicServing:
    return AnthropicServing(request.app.state.llm)
