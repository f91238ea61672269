"""A local server speaking AWS Bedrock's Converse and ConverseStream APIs.

It checks each request's SigV4 signature and the Converse body rules the way AWS does
(tests/vendors/aws_bedrock/rules.py, which the vendor gate asks too), answers in Bedrock's
JSON, streams in AWS's binary event-stream framing, and fails with Bedrock's error
headers and bodies.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import botocore.credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .upstream import Reply, Upstream, bad_body, serving

_ERRORS = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of AWS's event-stream encoding: prelude, CRCs, string headers, payload."""
    encoded = b"".join(
        struct.pack(">B", len(k)) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(payload).encode())


def _app(fake: Upstream, credentials: botocore.credentials.Credentials, region: str) -> Starlette:
    # Imported here, not above: the vendor package imports the replay server, which imports
    # this module's `frame`.
    from ..vendors.aws_bedrock.rules import aws_error, body_refusal, signature_refusal

    async def converse(request: Request) -> Response:
        body_bytes = await request.body()
        url = f"http://{request.headers['host']}{request.scope['raw_path'].decode()}"  # as sent
        headers = {k.lower(): v for k, v in request.headers.items()}
        refusal = signature_refusal(request.method, url, headers, body_bytes, credentials, region)
        if refusal is not None:
            return refusal
        body = json.loads(body_bytes)
        if (problem := body_refusal(body)) is not None:
            return aws_error(400, "ValidationException", problem)
        reply = fake.take(body, dict(request.headers), request.url.path)
        if reply.status != 200:
            kind = _ERRORS.get(reply.status, "InternalServerException")
            headers = {
                "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                **reply.headers,
            }
            return JSONResponse({"message": reply.error}, status_code=reply.status, headers=headers)
        words = reply.words
        stop = "tool_use" if reply.tool_calls else "end_turn"
        # Converse's inputTokens leave out the cached ones: of the 5, some come from the cache.
        usage = {
            "inputTokens": 5 - reply.cached_tokens,
            "outputTokens": len(words),
            "totalTokens": 5 + len(words),
        }
        if reply.cached_tokens:
            usage["cacheReadInputTokens"] = reply.cached_tokens
        if request.url.path.endswith("/converse"):
            if (bad := bad_body(reply)) is not None:
                return Response(bad, media_type="application/json")
            content: list[dict[str, Any]] = [{"text": reply.text}]
            content += [
                {"toolUse": {"toolUseId": i, "name": n, "input": json.loads(a)}}
                for i, n, a in reply.tool_calls
            ]
            return JSONResponse(
                {
                    "output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": stop,
                    "usage": usage,
                    "metrics": {"latencyMs": 12},
                }
            )

        async def frames() -> AsyncIterator[bytes]:
            yield event("messageStart", {"role": "assistant"})
            for i, word in enumerate(words):
                if reply.cut_after is not None and i == reply.cut_after:
                    yield event("contentBlockDelta", {"delta": {"text": "x"}, "contentBlockIndex": 0})[:20]
                    raise ConnectionResetError("cut midway on purpose")
                if i == 1 and (bad := bad_body(reply)) is not None:  # well framed, bad JSON inside
                    headers = {":event-type": "contentBlockDelta", ":content-type": "application/json"}
                    yield frame({**headers, ":message-type": "event"}, bad)
                if i == 1 and reply.garbage:
                    yield b"\x00\x00\x00\x10garbage-bytes!!"
                if i == 1 and reply.error_midway:
                    headers = {":exception-type": "modelStreamErrorException", ":message-type": "exception"}
                    yield frame(headers, json.dumps({"message": reply.error_midway}).encode())
                yield event("contentBlockDelta", {"delta": {"text": word}, "contentBlockIndex": 0})
                await asyncio.sleep(reply.pace_s)
            yield event("contentBlockStop", {"contentBlockIndex": 0})
            for n, (call_id, name, arguments) in enumerate(reply.tool_calls, start=1):
                yield event(
                    "contentBlockStart",
                    {"start": {"toolUse": {"toolUseId": call_id, "name": name}}, "contentBlockIndex": n},
                )
                for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                    yield event(
                        "contentBlockDelta", {"delta": {"toolUse": {"input": piece}}, "contentBlockIndex": n}
                    )
                yield event("contentBlockStop", {"contentBlockIndex": n})
            yield event("messageStop", {"stopReason": stop})
            yield event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}})

        return StreamingResponse(frames(), media_type="application/vnd.amazon.eventstream")

    return Starlette(
        routes=[
            Route("/model/{model}/converse", converse, methods=["POST"]),
            Route("/model/{model}/converse-stream", converse, methods=["POST"]),
        ]
    )


@contextmanager
def fake_bedrock(*script: Reply, access_key: str, secret_key: str, region: str) -> Iterator[Upstream]:
    credentials = botocore.credentials.Credentials(access_key, secret_key)
    with serving(lambda up: _app(up, credentials, region), script) as upstream:
        yield upstream
