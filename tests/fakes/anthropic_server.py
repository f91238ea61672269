"""A local server speaking Anthropic's Messages API: named SSE events, its error bodies.

It refuses what Anthropic refuses before a model runs (a missing key or `anthropic-version`,
`temperature` beside `top_p`, tool blocks without `tools`), in Anthropic's words: the rules
are tests/vendors/anthropic/rules.py, which the vendor gate asks too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..vendors.anthropic.rules import body_refusal, header_refusal
from .upstream import Reply, Upstream, bad_body, serving

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    402: "billing_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n".encode()


def _message(model: str, content: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }


def _app(fake: Upstream) -> Starlette:
    async def messages(request: Request) -> Response:
        body = await request.json()
        refused = header_refusal(request.headers) or body_refusal(body)
        if refused is not None:
            return refused
        reply = fake.take(body, dict(request.headers), request.url.path)
        if reply.status != 200:
            error = {"type": _ERROR_TYPES.get(reply.status, "api_error"), "message": reply.error}
            return JSONResponse(
                {"type": "error", "error": error}, status_code=reply.status, headers=reply.headers
            )
        words = reply.words
        # Anthropic's input_tokens leave out the cached ones: of the 5, some come from the cache.
        prompt = {
            "input_tokens": 5 - reply.cached_tokens,
            "cache_read_input_tokens": reply.cached_tokens,
            "cache_creation_input_tokens": 0,
        }
        usage = {**prompt, "output_tokens": len(words)}
        stop = "tool_use" if reply.tool_calls else "end_turn"
        if not body.get("stream"):
            if (bad := bad_body(reply)) is not None:
                return Response(bad, media_type="application/json")
            content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}]
            content += [
                {"type": "tool_use", "id": i, "name": n, "input": json.loads(a)}
                for i, n, a in reply.tool_calls
            ]
            message = _message(body["model"], content, usage)
            return JSONResponse({**message, "stop_reason": stop})

        async def events() -> AsyncIterator[bytes]:
            message = _message(body["model"], [], {**prompt, "output_tokens": 1})
            yield _event("message_start", {"type": "message_start", "message": message})
            text_block = {"type": "text", "text": ""}
            yield _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": text_block},
            )
            yield _event("ping", {"type": "ping"})
            for i, word in enumerate(words):
                if reply.cut_after is not None and i == reply.cut_after:
                    raise ConnectionResetError("cut midway on purpose")
                if i == 1 and (bad := bad_body(reply)) is not None:
                    yield b"event: content_block_delta\r\ndata: " + bad + b"\r\n\r\n"
                if i == 1 and reply.error_midway:
                    error = {"type": "overloaded_error", "message": reply.error_midway}
                    yield _event("error", {"type": "error", "error": error})
                delta = {"type": "text_delta", "text": word}
                yield _event(
                    "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
                )
                await asyncio.sleep(reply.pace_s)
            yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            for n, (call_id, name, arguments) in enumerate(reply.tool_calls, start=1):
                block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                yield _event(
                    "content_block_start", {"type": "content_block_start", "index": n, "content_block": block}
                )
                half = len(arguments) // 2
                for piece in (arguments[:half], arguments[half:]):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    yield _event(
                        "content_block_delta", {"type": "content_block_delta", "index": n, "delta": delta}
                    )
                yield _event("content_block_stop", {"type": "content_block_stop", "index": n})
            delta = {"stop_reason": stop, "stop_sequence": None}
            end = {"type": "message_delta", "delta": delta, "usage": {"output_tokens": len(words)}}
            yield _event("message_delta", end)
            yield _event("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream", headers=reply.headers)

    async def models(request: Request) -> Response:
        refused = header_refusal(request.headers)
        if refused is not None:
            return refused
        data = [
            {
                "type": "model",
                "id": "claude-fake",
                "display_name": "Claude Fake",
                "created_at": "2025-01-01T00:00:00Z",
            }
        ]
        return JSONResponse(
            {"data": data, "has_more": False, "first_id": "claude-fake", "last_id": "claude-fake"}
        )

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


@contextmanager
def fake_anthropic(*script: Reply) -> Iterator[Upstream]:
    with serving(_app, script) as upstream:
        yield upstream
