"""gRPC reflection (and health, unless public) behind the API keys, when there are keys.

Reflection lists every service and message, which is more than an anonymous caller of a
deployment with keys needs; health is what probes call, so it is public by default.
`auth.public` says which of the two answer without a key. In open local mode (no keys)
both are open, as everything is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeAlias

import grpc

from llmservice.kernel.errors import Unauthenticated
from llmservice.service.auth import AuthPolicy

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only
_PREFIXES = {"reflection": "/grpc.reflection.", "health": "/grpc.health."}


class PrivateServices(grpc.aio.ServerInterceptor):
    def __init__(self, auth: AuthPolicy, public: Collection[str]) -> None:
        self._auth = auth
        self._guarded = tuple(prefix for name, prefix in _PREFIXES.items() if name not in public)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self._auth.open or not method.startswith(self._guarded):
            return handler
        try:
            self._auth.authenticate(handler_call_details.invocation_metadata or ())
        except Unauthenticated as exc:
            return _refusing(handler, str(exc))
        return handler


def _refusing(handler: Handler, message: str) -> Handler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    async def refuse(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary
        else grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_unary_rpc_method_handler
        if handler.stream_unary
        else grpc.stream_stream_rpc_method_handler
    )
    return make(refuse, handler.request_deserializer, handler.response_serializer)
