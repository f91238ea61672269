"""The shim's FastAPI app: one gRPC channel to the service, owned by the app's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.constants import REF_TEMPLATE
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.exceptions import HTTPException

from llmservice._pb.llmservice.v1 import chat_session_pb2_grpc as session_grpc
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import response_store_pb2_grpc as store_grpc
from llmservice.rest import web
from llmservice.rest.anthropic.router import router as anthropic_router
from llmservice.rest.caller import api_key_caller_metadata
from llmservice.rest.errors import APIError, from_grpc
from llmservice.rest.gate import Gate, GatePolicy
from llmservice.rest.hot_routes import HotRoutes
from llmservice.rest.llmchat.router import router as llmchat_router
from llmservice.rest.llmchat.serving import LLMChatServing
from llmservice.rest.metrics import MetricsMiddleware, ShimMetrics
from llmservice.rest.openai import protocol as oa
from llmservice.rest.openai import responses
from llmservice.rest.openai import responses_protocol as rp
from llmservice.rest.openai.router import chat_completion, router
from llmservice.rest.openai.serving import OpenAIServing
from llmservice.rest.params import validation_error
from llmservice.rest.request_context import RequestContextMiddleware

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing

# The health entries of providers (llmservice.grpc_api.health; the shim does not import the service).
PROVIDER_PREFIX = "provider/"
CHANNEL_OPTIONS = [
    # No client-side retries: the shim passes each call on once, and skipping the retry
    # filter's bookkeeping saves ~25 us of CPU per call (measured on loopback).
    ("grpc.enable_retries", 0),
    # Spread calls over every address the target resolves to (dns:///svc:50051 with a
    # headless Service gives one per replica), not all to the first.
    ("grpc.lb_policy_name", "round_robin"),
]
# Called without FastAPI's routing (rest.hot_routes): the chat completion, the request that
# matters most for latency, under both of its mounts.
HOT_ROUTES = {
    ("POST", "/v1/chat/completions"): ("/chat/completions", chat_completion),
    ("POST", "/chat/completions"): ("/chat/completions", chat_completion),
}

Connect = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


def create_app(
    target: str,
    tracing: Tracing | None = None,
    connect: Connect | None = None,
    gate: GatePolicy | None = None,
) -> FastAPI:
    """The app, talking to the LLMService at `target` (host:port) over one channel; `tracing`
    (the service's, when tracing is on) gives each request a span. `connect` replaces the
    channel with another the generated stubs can use (`llmservice serve`: its in-process one).
    `gate`: what is checked before a route runs (rest.gate); by default bodies up to 16 MB."""

    def over_grpc() -> contextlib.AbstractAsyncContextManager[Any]:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (connect or over_grpc)() as opened:
            channel = cast(grpc.aio.Channel, opened)  # or a stand-in the stubs use the same way
            llm = pb_grpc.LLMServiceStub(channel)
            app.state.openai = OpenAIServing(llm)
            app.state.responses = responses.ResponsesServing(
                llm, store_grpc.ResponseStoreServiceStub(channel)
            )
            app.state.llm = llm  # for routes that call the service directly (embeddings)
            app.state.health = health_pb2_grpc.HealthStub(channel)
            app.state.llmchat = LLMChatServing(session_grpc.ChatSessionServiceStub(channel), llm)
            yield

    app = FastAPI(
        title="llmservice HTTP shim",
        summary="The OpenAI API and the /llmchat session API on top of the llmservice gRPC services",
        version="1",
        lifespan=lifespan,
        # Our own middleware makes each request's span (rest.request_context) and the shim
        # counts its requests (rest.metrics): FastAPI's native telemetry would make a second
        # span and read the environment on every request to learn that it is off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(router(), prefix="/v1")
    app.include_router(responses.router(), prefix="/v1")
    app.include_router(router(), include_in_schema=False)
    app.include_router(anthropic_router(), prefix="/v1")
    app.include_router(llmchat_router(), prefix="/llmchat")
    app.include_router(llmchat_router(), prefix="/v1/llmchat", include_in_schema=False)
    metrics = ShimMetrics()
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
    app.add_route("/health", _health, include_in_schema=False)
    app.add_route("/health/live", _live, include_in_schema=False)
    app.add_middleware(HotRoutes, fastapi=app, routes=HOT_ROUTES)
    app.add_middleware(Gate, policy=gate or GatePolicy())
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, tracing=tracing)
    app.state.metrics = metrics
    web.mount(app)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(grpc.aio.AioRpcError, _grpc_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    _document_chat_request(app)
    return app


async def _health(request: Request) -> JSONResponse:
    """200 while the service behind says SERVING (its gRPC health), else 503: a probe's answer.
    `providers` says, of each provider that watches its connection (a `grpc` backend, a
    registered plugin), whether it can be reached; one that cannot does not make this 503
    (requests for it fail, and routes fail over, but the service serves)."""
    health = request.app.state.health
    metadata = api_key_caller_metadata(request)  # health may be private (auth.public)
    try:
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        serving = False
    body: dict[str, Any] = {"status": "ok" if serving else "unavailable"}
    if serving:
        try:
            listed = await health.List(health_pb2.HealthListRequest(), timeout=5, metadata=metadata)
        except grpc.aio.AioRpcError:  # a service from before List: no providers to show
            listed = health_pb2.HealthListResponse()
        body["providers"] = {
            name.removeprefix(PROVIDER_PREFIX): "ok"
            if s.status == health_pb2.HealthCheckResponse.SERVING
            else "unavailable"
            for name, s in sorted(listed.statuses.items())
            if name.startswith(PROVIDER_PREFIX)
        }
    return JSONResponse(body, status_code=200 if serving else 503)


async def _live(request: Request) -> JSONResponse:
    """200 whenever the shim itself answers (a liveness probe's question), without the service."""
    return JSONResponse({"status": "ok"})


def _document_chat_request(app: FastAPI) -> None:
    """Put ChatCompletionRequest (parsed by its handler, not by FastAPI) in the document's components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in (oa.ChatCompletionRequest, rp.ResponseRequest):
                schema = model.model_json_schema(ref_template=REF_TEMPLATE)
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _grpc_error(request: Request, exc: Exception) -> JSONResponse:
    """A gRPC call that failed before its reply began: the one mapping of status to HTTP."""
    assert isinstance(exc, grpc.aio.AioRpcError)
    return from_grpc(exc).response()


_HTTP_ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """The router's own answers (no such route, wrong method) in OpenAI's shape too."""
    assert isinstance(exc, HTTPException)
    kind = _HTTP_ERROR_TYPES.get(exc.status_code, "invalid_request_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return APIError(exc.status_code, message, kind).response(exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the most specific offending parameter."""
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc).response()
