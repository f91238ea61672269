"""A local server speaking OpenAI's Chat Completions wire format (and Azure OpenAI's paths),
and its legacy Completions API (a raw prompt continued) with the same script.

A scripted success streams as SSE with CRLF line ends, comments and pings, tool-call
deltas and logprobs when asked, a usage-only last chunk and `[DONE]`; or comes as one
JSON body. Errors carry OpenAI's error body and the scripted headers.

Before the script answers, the fake refuses what the vendors refuse, in their words: a chat
call without a Bearer key, or `max_tokens` to a reasoning model (OpenAI); a call without
`api-version` or `api-key` (Azure). The rules are tests/vendors/openai/rules.py and
tests/vendors/azure_openai/rules.py, which the vendor gates ask too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..vendors.azure_openai.rules import request_refusal
from ..vendors.openai.rules import body_refusal, header_refusal
from .upstream import Reply, Upstream, bad_body, serving

__all__ = ["Reply", "fake_openai", "fake_vector"]


def _chunk(delta: dict[str, object], finish: str | None = None, logprobs: object = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
    }


def _logprobs(word: str, top: int) -> dict[str, object]:
    """The chosen word at p = 0.8, then runners-up at 0.1, 0.05, ..."""
    candidates = [(word, 0.8)] + [(f"alt{i}", 0.1 / 2**i) for i in range(top - 1)]
    entries = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in candidates]
    return {"content": [{**entries[0], "top_logprobs": entries[:top]}], "refusal": None}


def _legacy_logprobs(words: list[str], top: int) -> dict[str, object]:
    """The legacy Completions API's logprobs of `words`: parallel lists, each word at p = 0.8
    with runners-up at 0.1, 0.05, ... (top at least 1: the chosen word)."""
    offsets = [sum(len(w) for w in words[:i]) for i in range(len(words))]
    alternatives = [(f"alt{i}", 0.1 / 2**i) for i in range(max(top, 1) - 1)]
    return {
        "tokens": words,
        "token_logprobs": [math.log(0.8) for _ in words],
        "top_logprobs": [{w: math.log(0.8), **{t: math.log(p) for t, p in alternatives}} for w in words],
        "text_offset": offsets,
    }


def _text_chunk(text: str, finish: str | None = None, logprobs: object = None) -> dict[str, object]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
    }


def _tool_call_chunks(calls: list[tuple[str, str, str]]) -> list[dict[str, object]]:
    """Each call as OpenAI streams it: id and name first, then the arguments in two pieces."""
    chunks = []
    for index, (call_id, name, arguments) in enumerate(calls):
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        chunks.append(_chunk({"tool_calls": [head]}))
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            chunks.append(_chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    return chunks


def _usage(reply: Reply) -> dict[str, object]:
    """OpenAI's usage: cached prompt tokens are counted within prompt_tokens, and told apart."""
    words = len(reply.words)
    return {
        "prompt_tokens": 5,
        "completion_tokens": words,
        "total_tokens": 5 + words,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def fake_vector(text: str, dims: int) -> list[float]:
    """The fake's embedding of `text`: numbers from its SHA-256, scaled to unit length."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [seed[i % len(seed)] - 127.5 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def _app(fake: Upstream) -> Starlette:
    async def completions(request: Request) -> Response:
        """OpenAI's chat: a Bearer key required, `max_tokens` refused to reasoning models."""
        body = await request.json()
        return header_refusal(request.headers) or body_refusal(body) or await chat(request, body)

    async def chat(request: Request, body: dict[str, Any]) -> Response:
        reply = fake.take(body, dict(request.headers), request.url.path)
        if reply.status != 200:
            return _error_reply(reply)
        words = reply.words
        calls = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in reply.tool_calls
        ]
        if not body.get("stream"):
            if (bad := bad_body(reply)) is not None:
                return Response(bad, media_type="application/json")
            return JSONResponse(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": [{"type": "text", "text": reply.text}]
                                if reply.array_content
                                else reply.text,
                                "tool_calls": calls or None,
                            },
                            "finish_reason": "tool_calls" if calls else "stop",
                        }
                    ],
                    "usage": _usage(reply),
                }
            )

        async def _frames() -> AsyncIterator[bytes]:
            yield b": a comment the client must skip\r\n\r\n"
            yield b"data: " + json.dumps(_chunk({"role": "assistant", "content": ""})).encode() + b"\r\n\r\n"
            for i, word in enumerate(words):
                if reply.cut_after is not None and i == reply.cut_after:
                    raise ConnectionResetError("cut midway on purpose")
                if i == 1 and (bad := bad_body(reply)) is not None:
                    yield b"data: " + bad + b"\r\n\r\n"
                if i == 1 and reply.error_midway:  # how OpenAI (and vLLM, OpenRouter) fail mid-stream
                    error = {"message": reply.error_midway, "type": "server_error", "code": None}
                    yield b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"
                logprobs = _logprobs(word, body.get("top_logprobs") or 1) if body.get("logprobs") else None
                content: object = [{"type": "text", "text": word}] if reply.array_content else word
                data = json.dumps(
                    _chunk({"content": content}, None, logprobs), indent=1 if reply.multiline else None
                )
                yield b"".join(b"data: " + line.encode() + b"\r\n" for line in data.splitlines()) + b"\r\n"
                yield b": ping\r\n\r\n"
                await asyncio.sleep(reply.pace_s)
            for frame in _tool_call_chunks(reply.tool_calls):
                yield b"data: " + json.dumps(frame).encode() + b"\r\n\r\n"
            finish = "tool_calls" if reply.tool_calls else "stop"
            yield b"data: " + json.dumps(_chunk({}, finish)).encode() + b"\r\n\r\n"
            final = {**_chunk({}), "choices": [], "usage": _usage(reply)}
            yield b"data: " + json.dumps(final).encode() + b"\r\n\r\n"
            yield b"data: [DONE]\r\n\r\n"

        return StreamingResponse(
            _counted(fake, _frames()), media_type="text/event-stream", headers=reply.headers
        )

    async def embeddings(request: Request) -> Response:
        """Each text's vector from its SHA-256 (so equal texts give equal vectors), unit length."""
        body = await request.json()
        reply = fake.take(body, dict(request.headers), request.url.path)
        if reply.status != 200:
            return _error_reply(reply)
        if (bad := bad_body(reply)) is not None:
            return Response(bad, media_type="application/json")
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        dims = body.get("dimensions") if reply.honour_dimensions else None
        if dims is not None and dims > reply.embedding_dims:  # `dimensions` only shortens, as OpenAI's does
            message = f"dimensions {dims} is larger than this model's {reply.embedding_dims}"
            error = {"message": message, "type": "invalid_request_error", "param": "dimensions", "code": None}
            return JSONResponse({"error": error}, status_code=400)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(t, dims or reply.embedding_dims)}
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        # out of order on purpose: clients must place each vector by its index
        return JSONResponse({"object": "list", "data": data[::-1], "model": body["model"], "usage": usage})

    async def text_completions(request: Request) -> Response:
        """The legacy Completions API: `prompt` continued with the scripted text, whole or streamed."""
        body = await request.json()
        reply = fake.take(body, dict(request.headers), request.url.path)
        if reply.status != 200:
            return _error_reply(reply)
        words = reply.words
        top = body.get("logprobs")  # the legacy API's: an int, how many top logprobs
        if not body.get("stream"):
            if (bad := bad_body(reply)) is not None:
                return Response(bad, media_type="application/json")
            choice = {
                "text": reply.text,
                "index": 0,
                "logprobs": _legacy_logprobs(words, top) if top is not None else None,
                "finish_reason": "stop",
            }
            whole = {**_text_chunk(""), "model": body["model"], "choices": [choice], "usage": _usage(reply)}
            return JSONResponse(whole)

        async def _frames() -> AsyncIterator[bytes]:
            yield b": a comment the client must skip\r\n\r\n"
            offset = 0
            for i, word in enumerate(words):
                if reply.cut_after is not None and i == reply.cut_after:
                    raise ConnectionResetError("cut midway on purpose")
                if i == 1 and (bad := bad_body(reply)) is not None:
                    yield b"data: " + bad + b"\r\n\r\n"
                if i == 1 and reply.error_midway:
                    error = {"message": reply.error_midway, "type": "server_error", "code": None}
                    yield b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"
                logprobs = None
                if top is not None:
                    logprobs = {**_legacy_logprobs([word], top), "text_offset": [offset]}
                offset += len(word)
                data = json.dumps(_text_chunk(word, None, logprobs), indent=1 if reply.multiline else None)
                yield b"".join(b"data: " + line.encode() + b"\r\n" for line in data.splitlines()) + b"\r\n"
                yield b": ping\r\n\r\n"
                await asyncio.sleep(reply.pace_s)
            yield b"data: " + json.dumps(_text_chunk("", "stop")).encode() + b"\r\n\r\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                final = {**_text_chunk(""), "choices": [], "usage": _usage(reply)}
                yield b"data: " + json.dumps(final).encode() + b"\r\n\r\n"
            yield b"data: [DONE]\r\n\r\n"

        return StreamingResponse(
            _counted(fake, _frames()), media_type="text/event-stream", headers=reply.headers
        )

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "me"}]}
        )

    async def azure_completions(request: Request) -> Response:
        """Azure OpenAI: the deployment in the path, api-version required, the key in `api-key`."""
        body = await request.json()
        refused = request_refusal(request.query_params, request.headers)
        return refused or body_refusal(body) or await chat(request, body)

    async def azure_text_completions(request: Request) -> Response:
        """Azure OpenAI's legacy Completions API, as its chat: api-version and `api-key` required."""
        return request_refusal(request.query_params, request.headers) or await text_completions(request)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/completions", text_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", embeddings, methods=["POST"]),
            Route("/openai/deployments/{deployment}/chat/completions", azure_completions, methods=["POST"]),
            Route("/openai/deployments/{deployment}/completions", azure_text_completions, methods=["POST"]),
        ]
    )


@contextmanager
def fake_openai(*script: Reply, tls: tuple[str, str] | None = None) -> Iterator[Upstream]:
    """OpenAI at `url + "/v1"`; Azure OpenAI at `url` as its endpoint."""
    with serving(_app, script, tls=tls) as upstream:
        yield upstream


def _error_reply(reply: Reply) -> Response:
    """A scripted failure, in OpenAI's error body."""
    error = {"message": reply.error, "type": "error", "param": None, "code": None}
    return JSONResponse({"error": error}, status_code=reply.status, headers=reply.headers)


async def _counted(fake: Upstream, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The frames, counting a stream the client left before its end in `fake.abandoned`."""
    finished = False
    try:
        async for frame in frames:
            yield frame
        finished = True
    finally:
        if not finished:
            fake.abandoned += 1
