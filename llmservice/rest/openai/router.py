"""The OpenAI routes: thin handlers over OpenAIServing, mounted with and without /v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmservice.rest.body import parse_body
from llmservice.rest.caller import caller_metadata
from llmservice.rest.openai import codec
from llmservice.rest.openai import completions as cmp
from llmservice.rest.openai import embeddings as emb
from llmservice.rest.openai import protocol as oa
from llmservice.rest.openai.serving import OpenAIServing

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": oa.ErrorResponse} for code in (400, 401, 404, 429, 499, 500, 502, 503, 504)
}
# The chat body is parsed by the handler in one pass (model_validate_json) rather than by
# FastAPI's dependency solving, so the document says what the body and header are; the
# app puts ChatCompletionRequest's schema in the components (llmservice.rest.app).
CHAT_DOC: dict[str, Any] = {
    "parameters": [codec.PRIORITY_HEADER_DOC],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
    },
}


def router() -> APIRouter:
    """The routes; each finds the app's OpenAIServing (made by its lifespan) in app.state."""
    api = APIRouter(tags=["openai"], responses=ERRORS)

    @api.post(
        "/chat/completions",
        response_model=oa.ChatCompletion,
        summary="Create a chat completion",
        openapi_extra=CHAT_DOC,
    )
    async def chat_completions(request: Request) -> Response:
        return await chat_completion(request)

    @api.post(
        "/completions",
        response_model=cmp.Completion,
        summary="Create a completion of a raw prompt (the legacy Completions API)",
        openapi_extra=cmp.BODY_DOC,
    )
    async def completions(request: Request) -> Response:
        body = parse_body(cmp.CompletionRequest, await request.body())
        metadata, priority = caller_metadata(request), request.headers.get("x-priority")
        return await cmp.completions(request.app.state.llm, body, request, metadata, priority)

    @api.post(
        "/embeddings",
        response_model=emb.EmbeddingList,
        summary="Create embeddings",
        openapi_extra=emb.BODY_DOC,
    )
    async def embeddings(request: Request) -> Response:
        body = parse_body(emb.EmbeddingRequest, await request.body())
        return await emb.embeddings(request.app.state.llm, body, caller_metadata(request), request)

    @api.get("/models", response_model=oa.ModelList, summary="List the models the caller may use")
    async def list_models(request: Request) -> Response:
        return await _serving(request).models(caller_metadata(request))

    @api.get("/models/{model_id:path}", response_model=oa.Model, summary="One model")
    async def get_model(model_id: str, request: Request) -> Response:
        return await _serving(request).model(model_id, caller_metadata(request))

    return api


async def chat_completion(request: Request) -> Response:
    """POST /chat/completions (also called directly, without FastAPI's routing: rest.hot_routes)."""
    body = parse_body(oa.ChatCompletionRequest, await request.body())
    metadata, priority = caller_metadata(request), request.headers.get("x-priority")
    return await _serving(request).chat(body, request, metadata, priority)


def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing = request.app.state.openai
    return serving
