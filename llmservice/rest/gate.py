"""What the shim checks before a route reads anything: who may reach it, and how much they send.

One pure-ASGI pass over each HTTP request, in this order:

1. **Host** (DNS rebinding). While the shim listens on loopback, a request must name a
   loopback host (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`) or one of
   `server.allowed_hosts`: a web page whose name an attacker re-points at 127.0.0.1 still
   sends its own name, and is refused. Listening on other interfaces, the operator has
   chosen who reaches the port, and any Host is taken (as Ollama does).
2. **Origin** (cross-site requests). A request a browser sends for a page of another site
   carries that site's `Origin`. It is refused unless the origin is the shim's own (its
   chat page), a loopback one, or in `server.allowed_origins` (Ollama's OLLAMA_ORIGINS):
   so a page the user visits cannot drive their local model and tools, with a `text/plain`
   "simple" request or any other. Requests without Origin (SDKs, curl) are not affected.
3. **Private pages.** With API keys configured, /metrics and the API documents need a
   valid key unless `auth.public` lists them; the service says whether the key is valid.
4. **The body.** It is read through a counter: a declared Content-Length over
   `server.max_body_mb` is a 413 before a byte is read, and a chunked body is cut with a
   413 the moment it passes the limit, so no more than the limit is ever buffered. With
   API keys configured, a caller whose key is missing or wrong gets its 401 before the
   body is read (`check_key`: the service's own policy when the shim runs in its
   process; otherwise the service is asked, for bodies that could be large).

Refusals raised while a route reads its body are APIError, so each surface answers them
in its own shape; those made before routing use `refusals.refusal`, which picks the shape
by path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.rest.caller import metadata_for, presented_authorization
from llmservice.rest.errors import APIError
from llmservice.rest.refusals import refusal

# The key's check: None when it is valid, else why not (the service's own words).
KeyCheck = Callable[[str | None], Awaitable[str | None]]

LOOPBACK_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "[::1]")
PRIVATE_PAGES = {
    "/metrics": "metrics",
    "/docs": "docs",
    "/redoc": "docs",
    "/openapi.json": "docs",
    "/health": "health",
    "/health/live": "health",
}
_ASK_SERVICE_ABOVE = 1 << 20  # without a local key check: bodies that may be larger than this
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class GatePolicy:
    max_body_bytes: int = 16 << 20
    check_host: bool = False  # the shim listens on loopback
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    public: frozenset[str] = frozenset({"health"})
    check_key: KeyCheck | None = None  # None: ask the service
    keys_required: bool | None = None  # None: unknown (the service knows)
    _host_patterns: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_host_patterns", (*LOOPBACK_HOSTS, *(h.lower() for h in self.hosts)))

    def host_allowed(self, host: str) -> bool:
        if not self.check_host:
            return True
        name = _host_name(host)
        return any(_matches(name, p) for p in self._host_patterns)

    def origin_allowed(self, origin: str, host: str) -> bool:
        _, _, rest = origin.partition("://")
        if not rest:  # "null" (a sandboxed frame, a file): no site of its own to trust
            return "null" in self.origins or "*" in self.origins
        if rest.lower() == host.lower():  # the shim's own page
            return True
        if any(_matches(_host_name(rest), p) for p in LOOPBACK_HOSTS):
            return True
        return any(_matches(origin.lower(), p.lower()) for p in self.origins)


class Gate:
    def __init__(self, app: ASGIApp, policy: GatePolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy, path = self.policy, scope["path"]
        headers = _headers(scope)
        host = headers.get("host", "")
        if not policy.host_allowed(host):
            message = (
                f"Host {host!r} is not served here: this server answers loopback names only "
                "(add the name to server.allowed_hosts to serve it)"
            )
            await refusal(path, 403, message, "permission_error")(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin and not policy.origin_allowed(origin, host):
            message = (
                f"requests from pages of {origin} are not accepted (add the origin to "
                "server.allowed_origins to accept them)"
            )
            await refusal(path, 403, message, "permission_error")(scope, receive, send)
            return
        page = PRIVATE_PAGES.get(path)
        if page and page not in policy.public and policy.keys_required is not False:
            why = await self._key_refused(scope, headers, ask_service=True)
            if why:
                await refusal(path, 401, why, "authentication_error")(scope, receive, send)
                return
        if scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        await self.app(scope, await self._bounded(scope, headers, receive), send)

    async def _bounded(self, scope: Scope, headers: dict[str, str], receive: Receive) -> Receive:
        """`receive`, refusing a body over the limit (and, first, a caller without a valid key)."""
        limit = self.policy.max_body_bytes
        declared = _content_length(headers)
        checked = False
        seen = 0

        async def bounded() -> Message:
            nonlocal checked, seen
            if not checked:
                checked = True
                large = declared is None or declared > _ASK_SERVICE_ABOVE
                why = await self._key_refused(scope, headers, ask_service=large)
                if why:
                    raise APIError(401, why, "authentication_error")
                if declared is not None and declared > limit:
                    raise _too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        return bounded

    async def _key_refused(self, scope: Scope, headers: dict[str, str], *, ask_service: bool) -> str | None:
        """Why the request's key is refused, or None (also when there is nothing to check)."""
        policy = self.policy
        if policy.keys_required is False:
            return None
        authorization = presented_authorization(headers)
        if policy.check_key is not None:
            return await policy.check_key(authorization)
        if not ask_service:
            return None
        llm = getattr(scope["app"].state, "llm", None)
        if llm is None:
            return None
        try:
            await llm.ListModels(pb.ListModelsRequest(), metadata=metadata_for(authorization))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return exc.details() or "an API key is required"
        return None


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than {_megabytes(limit)} (server.max_body_mb)",
        "request_too_large",
        code="request_too_large",
    )


def _megabytes(n: int) -> str:
    mb = n / (1 << 20)
    return f"{mb:g} MB" if mb >= 1 else f"{n} bytes"


def _headers(scope: Scope) -> dict[str, str]:
    wanted = (b"host", b"origin", b"authorization", b"x-api-key", b"content-length")
    return {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in wanted}


def _content_length(headers: dict[str, str]) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _matches(name: str, pattern: str) -> bool:
    """`name` is `pattern`, where `*` stands for anything (and nothing else is special)."""
    return _pattern(pattern).fullmatch(name) is not None


def _host_name(host: str) -> str:
    """`host[:port]` without the port, lower case; IPv6 keeps its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
