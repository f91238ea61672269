"""Each gRPC call's request id, next-hop headers, payload log and (with tracing) span.

A server interceptor, so every service (LLMService under both names, chat sessions,
model admin) gets the same: the caller's `x-request-id` (the shim sends its own) or a
new one becomes the call's `context.REQUEST_ID` and goes back in the unary calls'
trailers (streams set theirs where they start; error trailers add it in
`server.status.abort`). grpc.aio runs the interceptor in the call's own task, so
what it sets is what the handler sees, with no wrapper around a stream: with tracing
off and payloads off, nothing runs per message. With tracing on, each call is a span
(`llm.request` for Chat, StreamChat and Embed), each streamed token an `llm.token`
event on it, and the reply's provider, model and usage its attributes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from llmservice.kernel.context import REQUEST_ID, REQUEST_ID_HEADER, begin, request_id_from, request_trailer
from llmservice.observability.logs import PAYLOADS
from llmservice.observability.span_attributes import attributes_of

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from llmservice.observability.tracing import Tracing

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only
Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
LLM_METHODS = ("/Chat", "/StreamChat", "/Embed")
_QUIET = ("/grpc.",)  # health and reflection: ids, but no spans and no payload lines


class CallContext(grpc.aio.ServerInterceptor):
    def __init__(self, tracing: Tracing | None = None, *, payloads: bool = False) -> None:
        self._tracing = tracing
        self._payloads = payloads
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        metadata = handler_call_details.invocation_metadata or ()
        rid = request_id_from(next((str(v) for k, v in metadata if k == REQUEST_ID_HEADER), None))
        begin(rid)
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._handlers[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        quiet = method.startswith(_QUIET)
        tracing = None if quiet else self._tracing
        payloads = self._payloads and not quiet
        # grpc.aio's handlers are coroutine and async generator functions, whatever the stubs say.
        replace: Callable[..., Handler] = handler._replace  # type: ignore[attr-defined]
        if handler.unary_unary is not None:
            return replace(unary_unary=_unary(cast(Unary, handler.unary_unary), method, tracing, payloads))
        if handler.unary_stream is not None and (tracing or payloads):
            inner = cast(Streaming, handler.unary_stream)
            return replace(unary_stream=_streaming(inner, method, tracing, payloads))
        return handler


def _unary(inner: Unary, method: str, tracing: Tracing | None, payloads: bool) -> Unary:
    if tracing is None and not payloads:

        async def plain(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            context.set_trailing_metadata(request_trailer())
            return await inner(request, context)

        return plain

    async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        context.set_trailing_metadata(request_trailer())
        _log_payload("request", method, request, payloads)
        if tracing is None:
            reply = await inner(request, context)
        else:
            with _span(tracing, method, context) as span:
                reply = await inner(request, context)
                _describe(span, reply)
        _log_payload("reply", method, reply, payloads)
        return reply

    return observed


def _streaming(inner: Streaming, method: str, tracing: Tracing | None, payloads: bool) -> Streaming:
    async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        _log_payload("request", method, request, payloads)
        text: list[str] = []
        if tracing is None:
            async for message in inner(request, context):
                text.append(getattr(message, "token", ""))
                yield message
        else:
            with _span(tracing, method, context) as span:
                async for message in inner(request, context):
                    token = getattr(message, "token", "")
                    if token:
                        span.add_event("llm.token")
                    if payloads:
                        text.append(token)
                    if getattr(message, "done", False):
                        _describe(span, message)
                    yield message
        if payloads:
            PAYLOADS.debug("%s reply text: %r", method, "".join(text))

    return observed


class _span:
    """The call's span, current for the block, with the next hop's headers made from it."""

    def __init__(self, tracing: Tracing, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        from opentelemetry.trace import SpanKind

        llm = method.endswith(LLM_METHODS) and "LLMService/" in method
        carrier = _carrier(context.invocation_metadata() or ())
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        name_ = "llm.request" if llm else method.lstrip("/")
        self._cm = tracing.span(name_, carrier, attributes, SpanKind.SERVER)
        self._tracing = tracing

    def __enter__(self) -> Span:
        span = self._cm.__enter__()
        rid = REQUEST_ID.get()
        span.set_attribute("llm.request_id", rid)
        begin(rid, *self._tracing.traceparent())
        return span

    def __exit__(self, *exc: Any) -> bool | None:
        return self._cm.__exit__(*exc)


def _carrier(metadata: Any) -> Mapping[str, str]:
    return {k: v for k, v in metadata if isinstance(v, str) and k in ("traceparent", "tracestate")}


def _describe(span: Span, reply: Any) -> None:
    """Provider, model and usage of a reply (or a stream's last chunk) as span attributes."""
    span.set_attributes(attributes_of(reply))


def _log_payload(what: str, method: str, message: object, payloads: bool) -> None:
    if payloads and isinstance(message, Message):
        PAYLOADS.debug("%s %s: %s", method, what, text_format.MessageToString(message, as_one_line=True))
