"""The floor under any Python HTTP gateway: a bare ASGI app on uvicorn that only forwards.

`python -m bench.http_floor --port N --upstream URL` serves POST /v1/chat/completions on
uvicorn (httptools, uvloop, as the shim runs): each request body goes to the upstream
as one raw POST through the openai client on the service's aiohttp transport (as the
service's provider sends it), and the upstream's bytes come back. No framework,
routing, validation, auth, gRPC or error mapping: what a client waits beyond the direct
call here is what one HTTP hop through Python costs on this machine, and the shim
cannot add less than that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import openai
import uvicorn

from llmservice.providers.remote.aiohttp_transport import AiohttpClient

from .serve_process import process_answering

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def forwarder(upstream: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    client = openai.AsyncOpenAI(
        api_key="none", base_url=upstream, max_retries=0, http_client=AiohttpClient(timeout=30)
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reply = await client.post("/chat/completions", body=json.loads(body), cast_to=httpx.Response)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": reply.content})

    return app


@contextlib.contextmanager
def floor_running(port: int, upstream: str) -> Iterator[str]:
    """The forwarder in its own process, once it answers; yields its base URL."""
    with floor_process(port, upstream) as (url, _):
        yield url


@contextlib.contextmanager
def floor_process(port: int, upstream: str) -> Iterator[tuple[str, int]]:
    """`floor_running`, with the process's pid (to profile it)."""
    argv = [sys.executable, "-m", "bench.http_floor", "--port", str(port), "--upstream", upstream]
    url = f"http://127.0.0.1:{port}/v1"

    def answers() -> bool:
        httpx.post(f"{url}/chat/completions", json={"model": "fixed", "messages": []})
        return True  # any answer: it serves

    with process_answering(argv, answers) as proc:
        yield url, proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", required=True, help="the upstream's base URL, e.g. http://127.0.0.1:N/v1"
    )
    args = parser.parse_args()
    uvicorn.run(
        forwarder(args.upstream),
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
