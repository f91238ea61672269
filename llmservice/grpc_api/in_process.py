"""A gRPC channel to this process's own servicers: the shim's hop when it runs beside the service.

`llmservice serve` runs the shim and the gRPC server in one process. Over loopback TCP
each call there crossed grpc core's threads four times (the shim's send, the server's
receive, the reply both ways): about 1.3 ms of a shim call's 3.8 ms on this project's
2-core machine, measured with timestamps along one call. This is grpc-java's
InProcessChannel (grpc-go's bufconn) for grpc.aio: the generated stubs take it as
their channel, so the shim still speaks only through them.

What a call does here is what it does over the network, minus the sockets:
- the request and the reply are serialized and parsed again with the stub's and the
  handler's own functions, so neither side shares objects with the other;
- the server's interceptors run (request ids, tracing, payload logs), and the handler
  sees the caller's metadata, deadline and nothing else: it runs in a task with an
  empty contextvars context, as it would in another process;
- an abort, an unexpected exception (UNKNOWN), a deadline (DEADLINE_EXCEEDED) or an
  unknown method (UNIMPLEMENTED) reaches the caller as grpc.aio.AioRpcError, with the
  trailing metadata the handler set;
- a message larger than what a side receives (the server's `max_message_bytes`, from
  server.max_body_mb; gRPC's default of 4 MiB for replies, which the shim's channel
  keeps) fails as it would on the network, with RESOURCE_EXHAUSTED;
- a stream's initial metadata is what the handler sent with `send_initial_metadata`, or
  nothing once the call ended without it;
- `cancel()`, or cancelling the task that awaits the call, cancels the handler's task;
  a stream holds at most `STREAM_BUFFER` replies the caller has not read yet;
- the channel's `cut` ends the calls still running with UNAVAILABLE, as a server's
  `stop(0)` at the end of a drain ends those on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar

import grpc

log = logging.getLogger(__name__)

STREAM_BUFFER = 64
MAX_RECEIVE = 4 * 1024 * 1024  # grpc's default max_receive_message_length, on either side
Serializer = Callable[[Any], bytes] | None
Handler = Any  # grpc.RpcMethodHandler; generic in the stubs only
_Call = TypeVar("_Call", "_UnaryUnaryCall", "_UnaryStreamCall")


class HandlerRegistry:
    """What the generated `add_*Servicer_to_server` functions give a server, kept for in-process calls."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def find(self, method: str) -> Handler | None:
        return self._handlers.get(method)


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _ServicerContext:
    """The handler's side of one in-process call: the subset of grpc.aio.ServicerContext servicers use."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], deadline: float | None) -> None:
        self._metadata, self._deadline = metadata, deadline
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()
        self.initial: asyncio.Future[tuple[tuple[str, str | bytes], ...]] = (
            asyncio.get_running_loop().create_future()
        )

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        if not self.initial.done():
            self.initial.set_result(tuple(metadata))

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> NoReturn:
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise _Abort(code, details)

    def peer(self) -> str:
        return "in-process"


class InProcessChannel:
    """A grpc.aio-style channel whose calls run `registry`'s handlers behind `interceptors`."""

    def __init__(
        self,
        registry: HandlerRegistry,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_request_bytes: int = MAX_RECEIVE,
    ) -> None:
        self._registry, self._interceptors = registry, tuple(interceptors)
        self.max_request_bytes = max_request_bytes
        self._calls: set[_Rpc] = set()  # running

    def cut(self, details: str) -> None:
        """End every call still running with UNAVAILABLE (`details`): the server's stop(0), here."""
        for rpc in list(self._calls):
            rpc.cut(details)

    def unary_unary(
        self, method: str, request_serializer: Serializer = None, response_deserializer: Any = None, **_: Any
    ) -> Callable[..., _UnaryUnaryCall]:
        return self._callable(method, request_serializer, response_deserializer, _UnaryUnaryCall)

    def unary_stream(
        self, method: str, request_serializer: Serializer = None, response_deserializer: Any = None, **_: Any
    ) -> Callable[..., _UnaryStreamCall]:
        return self._callable(method, request_serializer, response_deserializer, _UnaryStreamCall)

    def _callable(
        self, method: str, serializer: Serializer, deserializer: Any, kind: type[_Call]
    ) -> Callable[..., _Call]:
        def call(request: Any, timeout: float | None = None, metadata: Any = None, **_: Any) -> _Call:
            rpc = self._start(method, request, serializer, timeout, metadata, unary=kind.unary)
            return kind(rpc, deserializer)

        return call

    def stream_unary(self, method: str, *_: Any, **__: Any) -> Callable[..., NoReturn]:
        return _not_in_process(method)

    def stream_stream(self, method: str, *_: Any, **__: Any) -> Callable[..., NoReturn]:
        return _not_in_process(method)

    def _start(
        self,
        method: str,
        request: Any,
        serializer: Serializer,
        timeout: float | None,
        metadata: Any,
        *,
        unary: bool,
    ) -> _Rpc:
        payload = serializer(request) if serializer else request
        md = tuple((k.lower(), v) for k, v in metadata or ())
        deadline = None if timeout is None else time.monotonic() + timeout
        return _Rpc(self, method, payload, md, deadline, unary)

    async def _handler(self, details: _CallDetails) -> Handler | None:
        async def continuation(index: int, details: grpc.HandlerCallDetails) -> Handler | None:
            if index == len(self._interceptors):
                return self._registry.find(details.method)
            return await self._interceptors[index].intercept_service(
                lambda d: continuation(index + 1, d), details
            )

        return await continuation(0, details)

    async def close(self, grace: float | None = None) -> None:
        pass

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass


def _not_in_process(method: str) -> Callable[..., NoReturn]:
    def call(*_: Any, **__: Any) -> NoReturn:
        raise NotImplementedError(f"{method}: client streaming is not served in process")

    return call


class _Rpc:
    """One call's handler, run in its own task; streamed replies go through a bounded queue."""

    replies: asyncio.Queue[bytes | _End]  # a stream's

    def __init__(
        self,
        channel: InProcessChannel,
        method: str,
        payload: Any,
        metadata: tuple[tuple[str, str | bytes], ...],
        deadline: float | None,
        unary: bool,
    ) -> None:
        self._channel, self._method, self._payload, self._unary = channel, method, payload, unary
        self.context = _ServicerContext(metadata, deadline)
        if not unary:  # a unary call's reply is its task's result
            self.replies = asyncio.Queue(STREAM_BUFFER)
        self._cut: str | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(deadline), context=contextvars.Context())
        channel._calls.add(self)
        self.task.add_done_callback(lambda _: channel._calls.discard(self))

    def cut(self, details: str) -> None:
        self._cut = details
        self.task.cancel()

    async def _run(self, deadline: float | None) -> Any:
        try:
            if deadline is None:
                return await self._serve()
            async with asyncio.timeout_at(_loop_time(deadline)):
                return await self._serve()
        except _Abort as exc:
            error = self._error(exc.code, exc.details)
        except TimeoutError:
            error = self._error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except asyncio.CancelledError:
            if self._cut is None:  # the caller cancelled: nobody waits for an answer
                raise
            error = self._error(grpc.StatusCode.UNAVAILABLE, self._cut)
        except Exception as exc:
            log.exception("in-process call %s failed", self._method)
            error = self._error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        finally:
            if not self.context.initial.done():  # ended without sending any
                self.context.initial.set_result(())
        if self._unary:
            raise error
        await self.replies.put(_End(error))  # waits for room, as a full HTTP/2 window would
        return None

    async def _serve(self) -> Any:
        details = _CallDetails(self._method, self.context.invocation_metadata())
        handler = await self._channel._handler(details)
        if handler is None:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        payload = _check_size(self._payload, self._channel.max_request_bytes)
        request = handler.request_deserializer(payload) if handler.request_deserializer else payload
        serialize = handler.response_serializer or (lambda r: r)
        if handler.unary_unary is not None:
            return _check_size(serialize(await handler.unary_unary(request, self.context)))
        async for reply in handler.unary_stream(request, self.context):
            await self.replies.put(_check_size(serialize(reply)))
        await self.replies.put(_End())
        return None

    def _error(self, code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        trailing = grpc.aio.Metadata(*self.context.trailing)
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)


def _check_size(message: Any, limit: int = MAX_RECEIVE) -> Any:
    """`message` (serialized) unless it is larger than the receiving side takes."""
    if isinstance(message, bytes) and len(message) > limit:
        raise _Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({len(message)} vs. {limit})",
        )
    return message


def _loop_time(monotonic_deadline: float) -> float:
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


@dataclass(frozen=True)
class _End:
    """A stream's end: `error` unless it ended OK."""

    error: grpc.aio.AioRpcError | None = None


class _UnaryUnaryCall:
    unary: ClassVar[bool] = True

    def __init__(self, rpc: _Rpc, deserialize: Any) -> None:
        self._rpc, self._deserialize = rpc, deserialize

    def __await__(self) -> Generator[Any, None, Any]:
        reply = yield from self._rpc.task.__await__()  # a cancelled awaiter cancels the handler too
        return self._deserialize(reply) if self._deserialize else reply

    def cancel(self) -> bool:
        return self._rpc.task.cancel()

    def cancelled(self) -> bool:
        return self._rpc.task.cancelled()

    def done(self) -> bool:
        return self._rpc.task.done()


class _UnaryStreamCall:
    unary: ClassVar[bool] = False

    def __init__(self, rpc: _Rpc, deserialize: Any) -> None:
        self._rpc, self._deserialize = rpc, deserialize
        self._cancelled = False

    async def read(self) -> Any:
        if self._cancelled:
            raise asyncio.CancelledError()
        item = await self._rpc.replies.get()
        if self._cancelled:
            raise asyncio.CancelledError()
        if isinstance(item, _End):
            self._rpc.replies.put_nowait(item)  # later reads see the same end
            if item.error is not None:
                raise item.error
            return grpc.aio.EOF
        return self._deserialize(item) if self._deserialize else item

    async def initial_metadata(self) -> grpc.aio.Metadata:
        initial = self._rpc.context.initial
        if not initial.done():  # sent, or the call ended (a call cancelled unstarted never runs)
            await asyncio.wait([initial, self._rpc.task], return_when=asyncio.FIRST_COMPLETED)
        return grpc.aio.Metadata(*initial.result()) if initial.done() else grpc.aio.Metadata()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    def cancel(self) -> bool:
        if self._rpc.task.done():
            return False
        self._cancelled = True
        self._rpc.task.cancel()
        with contextlib.suppress(asyncio.QueueFull):  # wake a read that waits (a full queue has none)
            self._rpc.replies.put_nowait(_End())
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._rpc.task.done()
