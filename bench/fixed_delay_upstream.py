"""An OpenAI-compatible upstream that answers after a fixed delay: the gateway benchmark's far end.

`python -m bench.fixed_delay_upstream --port N --delay-ms D`. Chat completions wait D
ms, then answer whole, or stream a few chunks back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = ["The ", "answer ", "is ", "forty ", "two."]


def app(delay_s: float) -> Starlette:
    async def completions(request: Request) -> Response:
        body = await request.json()
        await asyncio.sleep(delay_s)
        usage = {"prompt_tokens": 5, "completion_tokens": len(WORDS), "total_tokens": 5 + len(WORDS)}
        base = {"id": "c1", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(WORDS)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        async def chunks() -> AsyncIterator[bytes]:
            for i, word in enumerate(WORDS):
                finish = "stop" if i == len(WORDS) - 1 else None
                choice = {"index": 0, "delta": {"content": word}, "finish_reason": finish}
                chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            yield f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "fixed", "object": "model", "owned_by": "bench"}]}
        )

    return Starlette(
        routes=[Route("/v1/chat/completions", completions, methods=["POST"]), Route("/v1/models", models)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20)
    args = parser.parse_args()
    uvicorn.run(
        app(args.delay_ms / 1000), host="127.0.0.1", port=args.port, log_level="error", access_log=False
    )


if __name__ == "__main__":
    main()
