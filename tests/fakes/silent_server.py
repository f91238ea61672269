"""A provider that hangs: a loopback server that accepts every connection, reads what the
client sends, and never answers a byte; or, with `models` set, answers only OpenAI's
`GET /v1/models` with those ids (a provider whose inference hangs while the rest answers).

The fakes of `upstream.py` can hang too (`Reply(delay_s=...)`), but uvicorn's shutdown
waits for a sleeping handler to finish, so a fake that hangs for good would hold up the
end of the test; this one closes every socket it holds at once.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Silent:
    url: str
    connections: int = 0  # accepted so far
    waiting: int = 0  # open connections with a request left unanswered
    requests: list[bytes] = field(default_factory=list)  # each request line received, e.g. b"POST /v1/..."
    models: list[str] | None = None  # when set, GET /v1/models is answered with these


def _models_reply(ids: list[str]) -> bytes:
    body = json.dumps(
        {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "me"} for i in ids]}
    )
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return (head + body).encode()


@contextlib.contextmanager
def silent_server() -> Iterator[Silent]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    silent = Silent(f"http://127.0.0.1:{listener.getsockname()[1]}")
    stop = threading.Event()
    held: list[socket.socket] = []
    unanswered: set[socket.socket] = set()

    def serve() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        with contextlib.suppress(BlockingIOError):
                            conn, _ = listener.accept()
                            conn.setblocking(False)
                            held.append(conn)
                            silent.connections += 1
                            selector.register(conn, selectors.EVENT_READ)
                        continue
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, ConnectionError):
                        data = b""
                    if not data:  # the client gave up: forget it
                        selector.unregister(sock)
                        sock.close()
                        unanswered.discard(sock)
                        silent.waiting = len(unanswered)
                        continue
                    lines = [line for line in data.split(b"\r\n") if line.startswith((b"POST ", b"GET "))]
                    silent.requests += lines
                    if silent.models is not None and any(
                        line.startswith(b"GET /v1/models ") for line in lines
                    ):
                        sock.sendall(_models_reply(silent.models))  # a few hundred bytes: never blocks
                    elif lines:
                        unanswered.add(sock)
                        silent.waiting = len(unanswered)

    thread = threading.Thread(target=serve, daemon=True, name="silent provider")
    thread.start()
    try:
        yield silent
    finally:
        stop.set()
        thread.join(5)
        for sock in (*held, listener):
            sock.close()
