"""A route called without FastAPI's routing answers as it would through FastAPI."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from llmservice.rest.errors import APIError
from llmservice.rest.hot_routes import HotRoutes
from llmservice.rest.metrics import MetricsMiddleware, ShimMetrics

SEEN: list[str] = []


async def echo(request: Request) -> Response:
    # The hot path gives a plain Starlette Route; FastAPI's routing one of its own.
    SEEN.append("hot" if type(request.scope["route"]) is Route else "routed")
    body = await request.json()
    if body.get("fail") == "api":
        raise APIError(400, "messages: is required", "invalid_request_error", param="messages")
    if body.get("fail") == "bug":
        raise RuntimeError("a bug")
    return JSONResponse({"said": body.get("say"), "route": request.scope["route"].path})


def app() -> FastAPI:
    made = FastAPI()
    made.add_api_route("/echo", echo, methods=["POST"])
    made.add_api_route("/v1/echo", echo, methods=["POST"])

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    made.add_exception_handler(APIError, api_error)
    routes = {("POST", "/v1/echo"): ("/echo", echo)}
    made.add_middleware(HotRoutes, fastapi=made, routes=routes)
    made.state.metrics = ShimMetrics()
    made.add_middleware(MetricsMiddleware, metrics=made.state.metrics)
    return made


async def post(made: FastAPI, path: str, body: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=made, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post(path, json=body)


@pytest.mark.unit
async def test_a_hot_route_answers_without_routing_and_reports_its_template() -> None:
    made = app()
    SEEN.clear()
    reply = await post(made, "/v1/echo", {"say": "hi"})
    assert reply.status_code == 200
    assert reply.json() == {"said": "hi", "route": "/echo"}
    assert SEEN == ["hot"]
    metrics = made.state.metrics.requests.labels("POST", "/echo", "200")
    assert metrics._value.get() == 1  # counted under the template, as FastAPI's routing does


@pytest.mark.unit
async def test_other_requests_go_through_fastapi() -> None:
    made = app()
    SEEN.clear()
    assert (await post(made, "/echo", {"say": "hi"})).json()["said"] == "hi"
    assert SEEN == ["routed"]
    transport = httpx.ASGITransport(app=made)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert (await client.get("/v1/echo")).status_code == 405  # another method: the router's answer


@pytest.mark.unit
async def test_errors_are_answered_by_the_apps_handlers_or_as_a_server_error() -> None:
    made = app()
    refused = await post(made, "/v1/echo", {"fail": "api"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages"
    broken = await post(made, "/v1/echo", {"fail": "bug"})
    assert broken.status_code == 500
