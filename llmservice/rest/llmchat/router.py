"""The /llmchat routes: thin handlers over LLMChatServing, mounted under /llmchat and /v1/llmchat."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmservice.rest.caller import caller_metadata
from llmservice.rest.llmchat import protocol as lc
from llmservice.rest.llmchat.serving import LLMChatServing
from llmservice.rest.openai.protocol import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 499, 500, 502, 503, 504)
}
EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `streaming: true`, an SSE stream of `event: token | tool_start | tool_end | "
        "tool_error | final | error` frames; `final` ends every good turn.",
        "content": {"text/event-stream": {}},
    }
}


def router() -> APIRouter:
    api = APIRouter(tags=["llmchat"], responses=ERRORS)

    @api.post(
        "/connect", response_model=lc.ConnectResponse, summary="Connect a session to an MCP server and an LLM"
    )
    async def connect(body: lc.ConnectRequest, request: Request) -> dict[str, Any]:
        return await _serving(request).connect(body, caller_metadata(request))

    @api.post(
        "/chat",
        response_model=lc.ChatResponse,
        responses=EVENTS,
        summary="One turn: the model may call tools",
    )
    async def chat(body: lc.ChatRequest, request: Request) -> Any:
        serving, metadata = _serving(request), caller_metadata(request)
        streaming = body.streaming
        if streaming is None:  # as the session was connected
            streaming = bool((await serving.config(body.user_id, metadata))["streaming"])
        if streaming:
            response: Response = await serving.stream(body, metadata, request)
            return response
        return await serving.chat(body, metadata, request)

    @api.post(
        "/disconnect", response_model=lc.DisconnectResponse, summary="End a session and forget its history"
    )
    async def disconnect(body: lc.DisconnectRequest, request: Request) -> dict[str, Any]:
        return await _serving(request).disconnect(body, caller_metadata(request))

    @api.get("/status/{user_id}", response_model=lc.StatusResponse, summary="Whether a session is connected")
    async def status(user_id: str, request: Request) -> dict[str, Any]:
        return await _serving(request).status(user_id, caller_metadata(request))

    @api.get("/config/{user_id}", summary="A session's settings, secrets masked")
    async def config(user_id: str, request: Request) -> dict[str, Any]:
        return await _serving(request).config(user_id, caller_metadata(request))

    @api.get("/gateway/models", response_model=lc.ModelsResponse, summary="The models a session may use")
    async def models(request: Request) -> dict[str, Any]:
        return await _serving(request).models(caller_metadata(request))

    @api.get(
        "/servers",
        response_model=lc.ServersResponse,
        summary="The MCP servers the service offers, each probed for reachability and tools",
    )
    async def servers(request: Request, refresh: bool = False) -> dict[str, Any]:
        return await _serving(request).servers(refresh, caller_metadata(request))

    return api


def _serving(request: Request) -> LLMChatServing:
    serving: LLMChatServing = request.app.state.llmchat
    return serving
