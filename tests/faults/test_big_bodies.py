"""Bodies far over server.max_body_mb, sent to `llmservice serve` with its shim, as a careless
or hostile client sends them: refused while they are read, with nothing buffered whole."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx

from ..servers import llmservice_serve

KEY = "sk-big-bodies-0123"
SIZE = 300 << 20  # what the probe that found this sent
MB = 1 << 20


async def body(size: int) -> AsyncIterator[bytes]:
    yield b'{"messages": [{"role": "user", "content": "'
    piece = b"a" * MB
    for _ in range(size // MB):
        yield piece
    yield b'"}]}'


async def send(url: str, headers: dict[str, str]) -> int | None:
    """POST a 300 MB chunked body; the status, or None if the server closed before answering."""
    async with httpx.AsyncClient(timeout=60) as http:
        try:
            response = await http.post(url, content=body(SIZE), headers=headers)
        except httpx.HTTPError:  # the server answered and closed while we were still sending
            return None
    return response.status_code


async def test_300_mb_bodies_with_and_without_a_key_leave_memory_where_it_was() -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    with llmservice_serve(f"auth.principals.ops.key_sha256={digest}", http=True) as served:
        url = served.base_url + "/v1/chat/completions"
        before = served.memory().rss
        for _ in range(3):
            no_key = await send(url, {"content-type": "application/json"})
            with_key = await send(url, {"content-type": "application/json", "authorization": f"Bearer {KEY}"})
            assert no_key in (401, None)
            assert with_key in (413, None)
        await asyncio.sleep(0.5)
        grown = served.memory().rss - before
        print(f"RSS {before / MB:.0f} MB before, grown by {grown / MB:.1f} MB")
        # The limit is 16 MB; the 300 MB the probe sent grew the process by 1.6 GB.
        assert grown < 64 * MB, f"RSS grew by {grown / MB:.0f} MB"
        async with httpx.AsyncClient(timeout=120) as http:
            small = await http.post(
                url,
                json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
                headers={"authorization": f"Bearer {KEY}"},
            )
        assert small.status_code == 200
