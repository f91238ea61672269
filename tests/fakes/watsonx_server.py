"""A local server speaking IBM watsonx.ai's chat API and IBM Cloud IAM's token exchange.

One server plays both hosts: POST /identity/token (IAM) swaps the API key for a bearer
token that lives `token_ttl_s`; /ml/v1/text/chat and /ml/v1/text/chat_stream want a
live token and answer an expired one with watsonx's 401 body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..vendors.watsonx.rules import error, refusal
from .upstream import Reply, Upstream, bad_body, serving

GRANT = "urn:ibm:params:oauth:grant-type:apikey"


@dataclass
class Tokens:
    api_key: str
    ttl_s: float = 3600
    live: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch seconds)
    issued: int = 0
    counter: itertools.count[int] = field(default_factory=itertools.count)
    failure: tuple[int, str] | None = None  # IAM answers every exchange with (status, errorMessage)

    def expire_all(self) -> None:
        self.live = {t: 0.0 for t in self.live}


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-wx",
        "model_id": model,
        "model": model,
        "created": int(time.time()),
        "created_at": "2025-06-01T12:00:00.000Z",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _app(fake: Upstream, tokens: Tokens) -> Starlette:
    async def token(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode())
        if tokens.failure is not None:
            status, message = tokens.failure
            body = {"errorCode": "BXNIM0000E", "errorMessage": message, "context": {"requestId": "r2"}}
            return JSONResponse(body, status_code=status)
        if form.get("grant_type") != [GRANT] or form.get("apikey") != [tokens.api_key]:
            return JSONResponse(
                {
                    "errorCode": "BXNIM0415E",
                    "errorMessage": "Provided API key could not be found.",
                    "context": {"requestId": "r1"},
                },
                status_code=400,
            )
        value = f"tok-{next(tokens.counter)}"
        expiry = time.time() + tokens.ttl_s
        tokens.live[value] = expiry
        tokens.issued += 1
        return JSONResponse(
            {
                "access_token": value,
                "refresh_token": "not_supported",
                "token_type": "Bearer",
                "expires_in": int(tokens.ttl_s),
                "expiration": int(expiry),
                "scope": "ibm openid",
            }
        )

    def authorised(request: Request) -> bool:
        value = request.headers.get("authorization", "").removeprefix("Bearer ")
        return tokens.live.get(value, 0.0) > time.time()

    async def chat(request: Request) -> Response:
        path = request.url.path
        if not authorised(request):
            expired = "Failed to authenticate the request due to an expired token"
            return error(401, "authentication_token_expired", expired, path)
        body = await request.json()
        if (refused := refusal(path, dict(request.query_params), body)) is not None:
            return refused  # the rules the replay gate holds too (tests/vendors/watsonx)
        reply = fake.take(body, dict(request.headers), path)
        if reply.status != 200:
            return error(reply.status, "error", reply.error, path, reply.headers)
        model, words = body["model_id"], reply.words
        usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in reply.tool_calls
        ]
        finish = "tool_calls" if calls else "stop"
        if path.endswith("/chat"):
            if (bad := bad_body(reply)) is not None:
                return Response(bad, media_type="application/json")
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if calls:
                message["tool_calls"] = calls
            return JSONResponse(
                {
                    "id": "chatcmpl-wx",
                    "model_id": model,
                    "created": int(time.time()),
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            n = itertools.count(1)

            def frame(data: dict[str, Any]) -> bytes:
                return f"id: {next(n)}\nevent: message\ndata: {json.dumps(data)}\n\n".encode()

            yield frame(_chunk(model, {"role": "assistant", "content": ""}))
            for i, word in enumerate(words):
                if reply.cut_after is not None and i == reply.cut_after:
                    raise ConnectionResetError("cut midway on purpose")
                if i == 1 and (bad := bad_body(reply)) is not None:
                    yield b"id: 99\nevent: message\ndata: " + bad + b"\n\n"
                if i == 1 and reply.error_midway:
                    errors = [{"code": "internal_error", "message": reply.error_midway}]
                    yield b"id: 98\nevent: error\ndata: " + json.dumps({"errors": errors}).encode() + b"\n\n"
                yield frame(_chunk(model, {"content": word}))
                await asyncio.sleep(reply.pace_s)
            for index, call in enumerate(calls):
                head = {
                    **call,
                    "index": index,
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                yield frame(_chunk(model, {"tool_calls": [head]}))
                arguments = call["function"]["arguments"]
                for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                    yield frame(
                        _chunk(model, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                    )
            yield frame({**_chunk(model, {}, finish), "usage": usage})

        return StreamingResponse(events(), media_type="text/event-stream", headers=reply.headers)

    async def specs(request: Request) -> Response:
        return JSONResponse(
            {"total_count": 1, "resources": [{"model_id": "ibm/granite-fake", "label": "granite"}]}
        )

    return Starlette(
        routes=[
            Route("/identity/token", token, methods=["POST"]),
            Route("/ml/v1/text/chat", chat, methods=["POST"]),
            Route("/ml/v1/text/chat_stream", chat, methods=["POST"]),
            Route("/ml/v1/foundation_model_specs", specs, methods=["GET"]),
        ]
    )


@contextmanager
def fake_watsonx(*script: Reply, api_key: str, tokens: Tokens | None = None) -> Iterator[Upstream]:
    tokens = tokens or Tokens(api_key)
    with serving(lambda up: _app(up, tokens), script) as upstream:
        upstream.tokens = tokens  # type: ignore[attr-defined]
        yield upstream
