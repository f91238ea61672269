"""httpx's API on aiohttp's connection pool: the HTTP client of every remote backend.

httpx's own pool falls apart under concurrency (encode/httpx#3215, open): on this
project's 2-core machine one shared httpx client made 230 requests/s at 32 concurrent
callers, with some calls stalled past a second, where aiohttp made 1,360, at about
half the CPU per call. The backends keep httpx's API (the official `openai` client
takes an httpx client; httpx-sse reads streams) and send through this transport.

Why not httpx-aiohttp (what the `openai` SDK ships as its aiohttp option): it reports
every lost connection, refused or reset, as httpx.ConnectTimeout, so an unreachable
upstream would read as a timeout; and it lets yarl re-quote the path, which breaks
AWS SigV4 signatures over escaped model ids such as `...-v1%3A0`. This module is that
transport with both right, and the request's `x-request-id` (when it is a UUID) and
`traceparent` (when tracing is on) on every upstream call: `context.upstream_headers`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import yarl

from llmservice.kernel.context import upstream_headers

_DEFAULT_LIMITS = httpx.Limits()
_TIMEOUTS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (TimeoutError, httpx.ReadTimeout),  # aiohttp's other timeouts are TimeoutErrors too
)
_FAILURES: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.NetworkError),
)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        for source, target in (*_TIMEOUTS, *_FAILURES):
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__, request=request) from exc
        raise  # unreachable: ClientError is the last source


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # the connection goes back to the pool
        else:
            self._response.close()  # a reply left unread: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with one aiohttp session, made on first use (it needs the loop)."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._ssl = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self._limits, self._proxy = limits, proxy
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl,
                limit=self._limits.max_connections or 0,  # 0: no limit
                keepalive_timeout=self._limits.keepalive_expiry or 15,
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        proxy = self._proxy
        with _as_httpx_errors(request):
            response = await self._session_now().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # exactly the path that was signed
                headers=[*request.headers.multi_items(), *upstream_headers()],
                data=await request.aread() or None,
                allow_redirects=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
                proxy=str(proxy.url) if proxy else None,
                proxy_auth=_basic_auth(proxy),
                proxy_headers=proxy.headers if proxy else None,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _basic_auth(proxy: httpx.Proxy | None) -> aiohttp.BasicAuth | None:
    if proxy is None or proxy.raw_auth is None:
        return None
    user, password = proxy.raw_auth
    return aiohttp.BasicAuth(user.decode(), password.decode())


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: set-cookie headers of a reply are ignored."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class AiohttpClient(httpx.AsyncClient):
    """An httpx.AsyncClient whose every transport, proxied ones included, is an AiohttpTransport.

    It keeps no cookies. One client serves every caller of a backend, so a cookie one
    upstream reply set would go out with everyone's later requests; and reading each
    reply for cookies cost ~0.2 ms a call (httpx builds a urllib Request to do it).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("AiohttpClient keeps no cookies")

    def _init_transport(  # type: ignore[override]
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
        **_: Any,
    ) -> httpx.AsyncBaseTransport:
        return transport or AiohttpTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)

    def _init_proxy_transport(  # type: ignore[override]
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        **_: Any,
    ) -> httpx.AsyncBaseTransport:
        return AiohttpTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits, proxy=proxy)
