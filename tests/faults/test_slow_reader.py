"""Clients that read a stream a few bytes a second (back-pressure).

Streamed /v1/chat/completions over raw sockets with a 4 KB receive buffer, reading 32 bytes
a second: meanwhile other clients are served, the service's memory stays where it was, each
slow client, once it reads at speed, gets its whole stream, and one that leaves midway
costs nothing after. With top_logprobs a frame is ~2 KB, ~200 KB a stream of 100 tokens;
on loopback the kernel takes up to 4 MB a connection (tcp_wmem), so these streams sit in
socket buffers: what the bundled model can write cheaply never pushes back into the
service over HTTP.

Over gRPC it does: with the full distribution a chunk is ~200 KB. A reader that stops
reading gets its sequence paused once it is READER_BEHIND events behind (the local
engine's back-pressure), so the service holds a few MB for it, not its whole stream, and
the stream goes on, nothing lost, when it reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator

import grpc
import openai

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from ..servers import Memory, ServeProcess, llmservice_serve
from .conftest import ONE_THREAD

SLOW_CLIENTS = 4
MAX_TOKENS = 100  # ~2 KB a frame with 20 top_logprobs: ~200 KB a stream
READ_BYTES, EVERY_S = 16, 0.5  # the slow clients' pace: 32 bytes a second
MB = 1 << 20
GROWTH_LIMIT = 64 * MB


def request(port: int) -> bytes:
    body = json.dumps(
        {
            "model": "",
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 20,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class SlowClient:
    """A raw socket with a 4 KB receive buffer that reads READ_BYTES every EVERY_S until told
    to read at speed (or to leave)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()
        self.fast = asyncio.Event()

    @classmethod
    async def open(cls, port: int) -> SlowClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window follows it
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request(port))
        return cls(sock)

    async def read(self) -> bytes:
        """Slowly until `fast`, then at speed to the end of the response."""
        loop = asyncio.get_running_loop()
        while not self.fast.is_set():
            self.received += await loop.sock_recv(self.sock, READ_BYTES)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fast.wait(), EVERY_S)
        while not self.received.endswith(b"0\r\n\r\n"):  # the last chunk of a chunked body
            data = await loop.sock_recv(self.sock, 65536)
            assert data, "the service closed the stream before its end"
            self.received += data
        self.sock.close()
        return bytes(self.received)

    def leave(self) -> None:
        """Go away at once, with a reset (SO_LINGER 0), as a client that crashed does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def sse_frames(response: bytes) -> list[str]:
    """The `data:` payloads of a chunked SSE response."""
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


async def sampled(served: ServeProcess, into: list[Memory]) -> None:
    while True:
        into.append(served.memory())
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def sampling(served: ServeProcess) -> AsyncIterator[list[Memory]]:
    samples: list[Memory] = []
    task = asyncio.create_task(sampled(served, samples))
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def one_stream(sdk: openai.AsyncOpenAI, top_logprobs: int | None = None) -> str:
    stream = await sdk.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        stream=True,
        logprobs=top_logprobs is not None,
        top_logprobs=top_logprobs,
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_slow_readers_hold_no_memory_and_keep_no_one_waiting() -> None:
    with llmservice_serve("log_level=WARNING", ONE_THREAD, http=True) as served:
        async with openai.AsyncOpenAI(
            api_key="unused", base_url=served.base_url + "/v1", max_retries=0
        ) as sdk:
            assert await one_stream(sdk, top_logprobs=20)  # warm, top_logprobs included
            before = served.memory()
            async with sampling(served) as samples:
                slow = [await SlowClient.open(served.http_port) for _ in range(SLOW_CLIENTS)]
                reading = [asyncio.create_task(c.read()) for c in slow]
                # While they trickle, others are served, one after another.
                started = time.monotonic()
                for _ in range(5):
                    assert await one_stream(sdk)
                await asyncio.sleep(max(0.0, 3 - (time.monotonic() - started)))  # let them trickle a while
                assert not any(t.done() for t in reading)
                # Two leave without a word; the other two read the rest at speed.
                for client, task in zip(slow[:2], reading[:2], strict=True):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    client.leave()
                for client in slow[2:]:
                    client.fast.set()
                responses = await asyncio.wait_for(asyncio.gather(*reading[2:]), 300)
                assert await one_stream(sdk)  # and the service goes on
            after = served.memory()

    for response in responses:
        frames = sse_frames(response)
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        tokens = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        assert 0 < len(tokens) <= MAX_TOKENS
        assert all(len(c["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 20 for c in tokens)
    peak = max(s.rss for s in samples)
    print(
        f"slow readers: RSS {before.rss / MB:.0f} MB before, peak +{(peak - before.rss) / MB:.1f} MB, "
        f"after +{(after.rss - before.rss) / MB:.1f} MB ({len(responses[0]) / 1024:.0f} KB a stream)"
    )
    assert peak - before.rss < GROWTH_LIMIT
    assert after.rss - before.rss < GROWTH_LIMIT


async def test_a_slow_grpc_reader_of_full_distributions_is_held_in_bounded_memory() -> None:
    """gRPC has flow control of its own (HTTP/2 windows); a chunk with the full distribution
    is ~200 KB (the vocabulary's floats), so a stream of 200 tokens owes its reader ~40 MB."""
    request = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content="Tell a long story.")],
        max_tokens=200,
        signal_options=pb.SignalOptions(full_distribution=True),
    )
    with llmservice_serve("log_level=WARNING", ONE_THREAD) as served:
        async with grpc.aio.insecure_channel(served.target) as channel:
            stub = pb_grpc.LLMServiceStub(channel)
            warm = pb.LLMChatRequest(
                messages=request.messages, max_tokens=2, signal_options=request.signal_options
            )
            assert [c async for c in stub.StreamChat(warm)]
            before = served.memory()
            calls = [stub.StreamChat(request) for _ in range(2)]
            for call in calls:
                first = await call.read()
                assert isinstance(first, pb.LLMChatChunk)
                owed = first.ByteSize() * request.max_tokens * len(calls)
            # Read nothing more: long enough for the engine to decode all of it, however busy
            # the machine; a service that holds what it owes stops the wait early.
            peak = before
            deadline = time.monotonic() + 15
            while peak.rss - before.rss < owed / 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                now = served.memory()
                peak = now if now.rss > peak.rss else peak
            # A reader that comes back gets the whole stream, nothing lost; the other leaves.
            rest = []
            while (chunk := await calls[0].read()) is not grpc.aio.EOF:
                rest.append(chunk)
            calls[1].cancel()
            print(f"slow gRPC readers: owed {owed / MB:.0f} MB, RSS +{(peak.rss - before.rss) / MB:.0f} MB")
            assert peak.rss - before.rss < owed / 4
            assert rest[-1].done
            assert rest[-1].completion_tokens == len(rest)  # the first chunk, and every one before the end
            # The engine is not stuck on the reader that left: the next call is answered.
            assert [c async for c in stub.StreamChat(warm)][-1].done
