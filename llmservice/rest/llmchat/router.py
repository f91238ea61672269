"""The /llmchat routes: thin handlers over LLMChatServing, mounted under /llmchat and /v1/llmchat.

Errors come as the documented API (a FastAPI service) answers them: `{"detail": "..."}`,
in its wording ("Invalid configuration: ...", "No active session found. ..."), with the
field at fault beside it as `param` when there is one. Bad input is a 400, as the
document says, not FastAPI's 422.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from llmservice.rest.caller import caller_metadata
from llmservice.rest.errors import APIError, from_grpc
from llmservice.rest.llmchat import protocol as lc
from llmservice.rest.llmchat.serving import LLMChatServing
from llmservice.rest.params import validation_error

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": lc.DetailError} for code in (400, 401, 403, 404, 429, 499, 500, 502, 503, 504)
}
EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `streaming: true`, an SSE stream of `event: token | tool_start | tool_end | "
        "tool_error | final | error` frames; `final` ends every good turn, `error` one that failed "
        "after the stream began. The payloads are listed in the API's documentation (README).",
        "content": {"text/event-stream": {}},
    }
}
NO_SESSION = "No active session found. Please connect to a server first."
# The documented wording of what failed, by route and HTTP status ("{}": our own message).
WORDING: dict[tuple[str, int], str] = {
    ("connect", 400): "Invalid configuration: {}",
    ("connect", 500): "Unexpected connection error: {}",
    ("chat", 503): "Chat service error: {}",
    ("chat", 504): "Request timed out. The LLM took too long to respond. ({})",
    ("chat", 500): "An unexpected error occurred: {}",
}


class DetailRoute(APIRoute):
    """A route whose every error is `{"detail": ..., "param": ...}` in the documented wording."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        name = self.name

        async def route(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                error = validation_error(exc)
            except grpc.aio.AioRpcError as exc:
                error = from_grpc(exc)
            except APIError as exc:
                error = exc
            except HTTPException as exc:  # FastAPI's own, reading the body
                error = APIError(exc.status_code, _why(exc), "invalid_request_error")
            detail = WORDING.get((name, error.status), "{}").format(error.message)
            headers = {"Retry-After": error.retry_after} if error.retry_after else None
            body = {"detail": detail, "param": error.param}
            return JSONResponse(body, status_code=error.status, headers=headers)

        return route


def _why(exc: HTTPException) -> str:
    if isinstance(exc.__cause__, RecursionError):
        return "the body is not valid JSON: it is nested too deeply"
    return str(exc.detail)


def router() -> APIRouter:
    api = APIRouter(tags=["llmchat"], responses=ERRORS, route_class=DetailRoute)

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
            try:
                streaming = bool((await serving.config(body.user_id, metadata))["enable_streaming"])
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                raise APIError(404, NO_SESSION, "not_found_error") from None
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

    @api.get(
        "/config/{user_id}", response_model=lc.ConfigResponse, summary="A session's settings, secrets masked"
    )
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
