"""The remote backends' HTTP client against a real local HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from llmservice.providers.remote.aiohttp_transport import AiohttpClient


@pytest.fixture
async def cookie_server() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        response = web.json_response({"cookie": request.headers.get("Cookie", "")})
        response.set_cookie("session", "of-whoever-called-first")
        return response

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def test_a_cookie_one_reply_sets_never_goes_out_with_later_requests(cookie_server: str) -> None:
    async with AiohttpClient() as http:
        first = await http.get(cookie_server)
        assert "session=" in first.headers["set-cookie"]
        second = await http.get(cookie_server)
    assert second.json() == {"cookie": ""}


def test_the_client_refuses_cookies_it_would_not_keep() -> None:
    with pytest.raises(ValueError, match="keeps no cookies"):
        AiohttpClient().cookies = {"a": "b"}
