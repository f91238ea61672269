"""The floor under any Python gRPC gateway: a grpc.aio server that only forwards.

`python -m bench.grpc_floor --port N --upstream URL` serves LLMService.Chat and StreamChat on uvloop, as
`llmservice serve` does; each call is one raw POST to the upstream, exactly as the
direct side of the gateway benchmark makes it, and the reply's text goes back. No
settings, routing, scheduling, validation or error mapping: what a caller waits beyond
the direct call here is what the gRPC hop itself costs on this machine, and the service
cannot add less than that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import httpx_sse
import openai

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.providers.remote.aiohttp_transport import AiohttpClient


class _Forwarder(pb_grpc.LLMServiceServicer):
    def __init__(self, upstream: str) -> None:
        self._client = openai.AsyncOpenAI(
            api_key="none", base_url=upstream, max_retries=0, http_client=AiohttpClient(timeout=30)
        )

    async def Chat(self, request: pb.LLMChatRequest, context: Any) -> pb.LLMChatResponse:
        body = {
            "model": "fixed",
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        reply = (await self._client.post("/chat/completions", body=body, cast_to=httpx.Response)).json()
        return pb.LLMChatResponse(content=reply["choices"][0]["message"]["content"], model=reply["model"])

    async def StreamChat(self, request: pb.LLMChatRequest, context: Any) -> AsyncIterator[pb.LLMChatChunk]:
        """Each upstream event's text as a chunk of its own, as it comes."""
        body = {
            "model": "fixed",
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
        }
        response = await self._client.post(
            "/chat/completions", body=body, cast_to=httpx.Response, stream=True
        )
        try:
            async for sse in httpx_sse.EventSource(response).aiter_sse():
                if sse.data == "[DONE]":
                    break
                for choice in json.loads(sse.data)["choices"]:
                    yield pb.LLMChatChunk(token=choice["delta"].get("content") or "")
        finally:
            await response.aclose()


class _Echo(pb_grpc.LLMServiceServicer):
    """No upstream: what one gRPC round trip costs by itself."""

    async def Chat(self, request: pb.LLMChatRequest, context: Any) -> pb.LLMChatResponse:
        return pb.LLMChatResponse(content="The answer is forty two.", model="fixed")


async def _serve(port: int, upstream: str) -> None:
    server = grpc.aio.server()
    servicer = _Forwarder(upstream) if upstream else _Echo()
    pb_grpc.add_LLMServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextlib.asynccontextmanager
async def floor_running(port: int, upstream: str) -> AsyncIterator[pb_grpc.LLMServiceStub]:
    """The forwarder in its own process (`upstream` "": the echo server); yields a stub to it."""
    async with floor_process(port, upstream) as (stub, _):
        yield stub


@contextlib.asynccontextmanager
async def floor_process(port: int, upstream: str) -> AsyncIterator[tuple[pb_grpc.LLMServiceStub, int]]:
    """`floor_running`, with the process's pid (to profile it)."""
    argv = [sys.executable, "-m", "bench.grpc_floor", "--port", str(port), "--upstream", upstream]
    proc = await asyncio.create_subprocess_exec(*argv)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            yield pb_grpc.LLMServiceStub(channel), proc.pid
    finally:
        proc.terminate()
        await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--upstream", default="", help="the upstream's base URL, e.g. http://127.0.0.1:N/v1; none: echo"
    )
    args = parser.parse_args()
    import uvloop  # as `llmservice serve` runs

    uvloop.run(_serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
