"""A local server speaking Ollama's native API: NDJSON chat, tags, ps, pull progress, keep-alive.

It refuses what Ollama refuses (`tests/vendors/ollama/rules.py`, the replay gate's own
check), names loaded models as Ollama's /api/ps does (with their tag), and fails a pull
of a model the registry lacks the way Ollama does: 200, then an error line.
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

from ..vendors.ollama.rules import refusal
from .upstream import Reply, Upstream, bad_body, serving

CREATED = "2025-06-01T12:00:00.000000Z"


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


def _shown(model: str) -> str:
    """A model's name as /api/ps shows it: Ollama's DisplayShortest always has a tag."""
    return model if model.rfind(":") > model.rfind("/") else f"{model}:latest"


def _refused(path: str, body: Any) -> Response | None:
    refused = refusal(path, body)
    return None if refused is None else JSONResponse({"error": refused[1]}, status_code=refused[0])


def _done(model: str, reply: Reply, words: list[str]) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": CREATED,
        "done": True,
        "done_reason": "stop",
        "total_duration": 1000,
        "load_duration": 10,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 100,
        "eval_count": len(words),
        "eval_duration": 800,
    }


def _app(fake: Upstream) -> Starlette:
    loaded: set[str] = set()

    async def chat(request: Request) -> Response:
        body = await request.json()
        reply = fake.take(body, dict(request.headers), request.url.path)
        if (refused := _refused(request.url.path, body)) is not None:
            return refused
        if reply.status != 200:
            return JSONResponse({"error": reply.error}, status_code=reply.status, headers=reply.headers)
        model, words = body["model"], reply.words
        loaded.add(_shown(model))
        calls = [
            {"function": {"name": n, "arguments": json.loads(a)}, "id": i} for i, n, a in reply.tool_calls
        ]
        if not body.get("stream", True):
            if (bad := bad_body(reply)) is not None:
                return Response(bad, media_type="application/json")
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if calls:
                message["tool_calls"] = calls
            return JSONResponse({**_done(model, reply, words), "message": message})

        async def lines() -> AsyncIterator[bytes]:
            for i, word in enumerate(words):
                if reply.cut_after is not None and i == reply.cut_after:
                    yield b'{"model": "' + model.encode() + b'", "message": {"role": "assis'
                    raise ConnectionResetError("cut midway on purpose")
                if i == 1 and (bad := bad_body(reply)) is not None:
                    yield bad + b"\n"
                if i == 1 and reply.error_midway:
                    yield _line({"error": reply.error_midway})
                message = {"role": "assistant", "content": word}
                yield _line({"model": model, "created_at": CREATED, "message": message, "done": False})
                await asyncio.sleep(reply.pace_s)
            if calls:
                message = {"role": "assistant", "content": "", "tool_calls": calls}
                yield _line({"model": model, "created_at": CREATED, "message": message, "done": False})
            yield _line({**_done(model, reply, words), "message": {"role": "assistant", "content": ""}})

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=reply.headers)

    async def tags(request: Request) -> Response:
        models = [{"name": "llama3.2:1b", "model": "llama3.2:1b", "size": 1300000000, "digest": "abc"}]
        return JSONResponse({"models": models})

    async def ps(request: Request) -> Response:
        return JSONResponse({"models": [{"name": m, "model": m} for m in sorted(loaded)]})

    async def generate(request: Request) -> Response:
        body = await request.json()
        fake.take(body, dict(request.headers), request.url.path)
        if (refused := _refused(request.url.path, body)) is not None:
            return refused
        model = body["model"]
        if body.get("keep_alive") in (0, "0", "0s"):
            loaded.discard(_shown(model))
            reason = "unload"
        else:
            loaded.add(_shown(model))
            reason = "load"
        return JSONResponse(
            {"model": model, "created_at": CREATED, "response": "", "done": True, "done_reason": reason}
        )

    async def pull(request: Request) -> Response:
        body = await request.json()
        fake.take(body, dict(request.headers), request.url.path)
        missing = body["model"] == "missing"

        async def progress() -> AsyncIterator[bytes]:
            yield _line({"status": "pulling manifest"})
            if missing:  # the registry has no such manifest: Ollama's 200 is already sent
                yield _line({"error": "pull model manifest: file does not exist"})
                return
            for done in (0, 500, 1000):
                yield _line(
                    {"status": "pulling abc123", "digest": "sha256:abc123", "total": 1000, "completed": done}
                )
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                yield _line({"status": status})

        return StreamingResponse(progress(), media_type="application/x-ndjson")

    async def delete(request: Request) -> Response:
        body = await request.json()
        fake.take(body, dict(request.headers), request.url.path)
        if body["model"] != "llama3.2:1b":
            return JSONResponse({"error": f"model '{body['model']}' not found"}, status_code=404)
        loaded.discard(_shown(body["model"]))
        return Response(status_code=200)

    return Starlette(
        routes=[
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/tags", tags, methods=["GET"]),
            Route("/api/ps", ps, methods=["GET"]),
            Route("/api/generate", generate, methods=["POST"]),
            Route("/api/pull", pull, methods=["POST"]),
            Route("/api/delete", delete, methods=["DELETE"]),
        ]
    )


@contextmanager
def fake_ollama(*script: Reply) -> Iterator[Upstream]:
    with serving(_app, script) as upstream:
        yield upstream
