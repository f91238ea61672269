"""The shim's own Prometheus metrics, served on its /metrics: HTTP requests by route and status.

What the model calls themselves cost and produce is counted by the service (its metrics
port); the shim counts what only it sees: each HTTP request, by method, route template
(never the raw path, which can carry user ids) and status, and how long it took to the
last byte of the reply, streams included.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmservice.observability.metrics import LATENCY_BUCKETS  # the service's, so the two histograms line up


class ShimMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llmshim_http_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "llmshim_http_request_duration_seconds",
            "Time to the last byte of the reply, by method and route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("llmshim_http_requests_in_flight", "HTTP requests being answered", registry=r)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): a clock per request; per reply message only the
    check for the status line (one Python call per streamed chunk)."""

    def __init__(self, app: ASGIApp, metrics: ShimMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server sends if the app fails before answering
        start = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            m.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            m.requests.labels(scope["method"], route, str(status)).inc()
            m.duration.labels(scope["method"], route).observe(time.perf_counter() - start)
