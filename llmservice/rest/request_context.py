"""Each HTTP request's id (the caller's `x-request-id` or a new one) and, with tracing, its span.

Pure ASGI: the id becomes the request's `context.REQUEST_ID` (for log lines) and goes
back as the reply's `x-request-id` header; `context.OUTGOING` carries it, with the
span's `traceparent` when tracing is on, to the service as gRPC metadata
(`caller.caller_metadata`). Tracing is passed in by whoever built it: with none, no
OpenTelemetry code is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmservice.kernel.context import REQUEST_ID_HEADER, begin, request_id_from

if TYPE_CHECKING:
    from llmservice.observability.tracing import Tracing

_HEADER = REQUEST_ID_HEADER.encode()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, tracing: Tracing | None = None) -> None:
        self.app, self.tracing = app, tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        rid = request_id_from(next((v.decode("latin-1") for k, v in headers if k == _HEADER), None))
        tag = (_HEADER, rid.encode())

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), tag]
            await send(message)

        if self.tracing is None:
            begin(rid)
            await self.app(scope, receive, sending)
            return
        await self._traced(scope, receive, sending, rid)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        from opentelemetry.trace import SpanKind

        assert self.tracing is not None
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        method = scope["method"]
        attributes = {"http.request.method": method, "llm.request_id": rid}
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracing.span(method, carrier, attributes, SpanKind.SERVER) as span:
            begin(rid, *self.tracing.traceparent())
            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:  # the template, never the raw path (it can carry user ids)
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
