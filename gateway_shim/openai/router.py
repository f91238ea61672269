"""The OpenAI routes: thin handlers over OpenAIServing, mounted with and without /v1."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from ..caller import caller_metadata
from . import protocol as oa
from .serving import OpenAIServing

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": oa.ErrorResponse} for code in (400, 401, 404, 429, 499, 500, 502, 503, 504)
}


def router() -> APIRouter:
    """The routes; each finds the app's OpenAIServing (made by its lifespan) in app.state."""
    api = APIRouter(tags=["openai"], responses=ERRORS)

    @api.post("/chat/completions", response_model=oa.ChatCompletion, summary="Create a chat completion")
    async def chat_completions(
        body: oa.ChatCompletionRequest,
        request: Request,
        x_priority: Annotated[str | None, Header()] = None,
    ) -> Response:
        return await _serving(request).chat(body, request, caller_metadata(request), x_priority)

    @api.get("/models", response_model=oa.ModelList, summary="List the models the caller may use")
    async def list_models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": await _serving(request).models(caller_metadata(request))}

    @api.get("/models/{model_id:path}", response_model=oa.Model, summary="One model")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        return await _serving(request).model(model_id, caller_metadata(request))

    return api


def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing = request.app.state.openai
    return serving
