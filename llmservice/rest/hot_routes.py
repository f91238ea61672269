"""The busiest routes, called without FastAPI's per-request machinery.

FastAPI spends about 40 us of CPU on every request before a handler runs (its exception
and exit-stack middlewares, matching the path against every route, solving the route's
dependencies), measured on this project's 2-core machine; for a chat completion that is
a tenth of all the shim adds. A handler that reads its own body and returns a Response
needs none of it, so for the (method, path) pairs named here this middleware, the
innermost of the app's own, calls the endpoint the router has for it itself. Everything else a request
meets is unchanged: the gate, the metrics and the request context ran before it, they
see the same route in `scope["route"]`, and an exception is answered by the app's own
handler for it (APIError, a gRPC error, a validation error) or, with none, goes on to
the server's 500 as from any route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """`routes`: (method, path) to the route's template (as the router reports it: the same
    under each prefix it is mounted at) and the endpoint the router has for it."""

    def __init__(
        self, app: ASGIApp, fastapi: FastAPI, routes: Mapping[tuple[str, str], tuple[str, Endpoint]]
    ) -> None:
        self.app, self._fastapi = app, fastapi
        # What the metrics and the request's span read of the route: its template.
        self._routes = {
            (method, path): Route(template, endpoint, methods=[method])
            for (method, path), (template, endpoint) in routes.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
        request = Request(scope, receive, send)
        try:
            response: Response = await route.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Any:
        """The app's handler for `exc`'s class or the nearest of its bases, as Starlette looks."""
        handlers = self._fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None
