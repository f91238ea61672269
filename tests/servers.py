"""Real servers the integration tests start as subprocesses: Redis and MCP servers."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MCP_TOKEN = "mcp-test-token-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.args!r} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class RedisServer:
    """A redis-server of our own on a free port; it can be killed and started again."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it with apt")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def demo_mcp_server(
    transport: str = "streamable_http", token: str = MCP_TOKEN, only: tuple[str, ...] = ()
) -> Iterator[str]:
    """The in-repo MCP server (tests/mcp_servers/demo_server.py); yields its URL."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.mcp_servers.demo_server",
        "--port",
        str(port),
        "--transport",
        transport,
    ]
    if token:
        argv += ["--token", token]
    for name in only:
        argv += ["--only", name]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/{'sse' if transport == 'sse' else 'mcp'}"
    finally:
        stop(proc)


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    grpc_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@contextlib.contextmanager
def llmservice_serve(*settings: str) -> Iterator[ServeProcess]:
    """`llmservice serve` as a process of its own (no HTTP shim), once it says it is ready."""
    argv = [sys.executable, "-m", "llmservice", "serve", "--grpc-port", "0", "--http-port", "-1"]
    for setting in settings:
        argv += ["--set", setting]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 120
        port = 0
        while time.monotonic() < deadline and (line := proc.stdout.readline()):
            if line.startswith("llmservice: ready"):
                port = int(line.rsplit(":", 1)[1])
                break
        if not port:
            raise RuntimeError("llmservice serve did not become ready")
        yield ServeProcess(proc, port)  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
