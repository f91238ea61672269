"""Real servers the integration and fault tests start as subprocesses: Redis, MCP servers,
`llmservice serve`."""

from __future__ import annotations

import contextlib
import os
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
    """A redis-server of our own on a free port; it can be killed and started again.

    With `persist_dir`, it keeps an append-only file there, fsynced on every write, so a
    SIGKILL loses nothing and a start on the same directory brings the data back; without
    it, nothing is kept and a restart starts empty."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    persist_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it with apt")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.persist_dir is None:
            argv += ["--appendonly", "no"]
        else:
            argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.persist_dir)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def redis_server(persist_dir: Path | None = None) -> Iterator[RedisServer]:
    server = RedisServer(persist_dir=persist_dir)
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
    http_port: int = -1  # the HTTP shim's, when started with http=True
    metrics_port: int = -1  # Prometheus /metrics, when server.metrics_port was set
    said: list[str] = field(default_factory=list)  # what it printed until it was ready

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def memory(self) -> Memory:
        """What the process holds in memory now (its /proc status)."""
        return memory_of(self.proc.pid)


@dataclass(frozen=True)
class Memory:
    """A process's resident memory, in bytes, from /proc/PID/status (Linux)."""

    rss: int  # VmRSS: all of it, the model file's mapped pages included
    anon: int  # RssAnon: what the process allocated (heaps, KV cache), no file pages


def memory_of(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0]) * 1024  # the kernel says kB
    return Memory(rss=fields["VmRSS"], anon=fields["RssAnon"])


@contextlib.contextmanager
def llmservice_serve(
    *settings: str,
    http: bool = False,
    log: Path | None = None,
    grpc_port: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[ServeProcess]:
    """`llmservice serve` as a process of its own, once it says it is ready; with `http`, its
    HTTP shim too (on a free port), as operators run it; with `log`, its stderr (the log)
    goes to that file; gRPC on `grpc_port` (0: a free one); `env`: variables added to ours."""
    argv = [sys.executable, "-m", "llmservice", "serve", "--grpc-port", str(grpc_port)]
    argv += ["--http-port", "0" if http else "-1"]
    for setting in settings:
        argv += ["--set", setting]
    with contextlib.ExitStack() as opened:  # the file is closed here: the child has its own copy
        stderr = subprocess.DEVNULL if log is None else opened.enter_context(log.open("w"))
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 120
        port = http_port = 0
        metrics_port = -1
        said: list[str] = []
        while time.monotonic() < deadline and (line := proc.stdout.readline()):
            said.append(line.rstrip("\n"))
            if line.startswith("llmservice: HTTP shim"):
                http_port = int(line.rstrip().rsplit(":", 1)[1])
            if line.startswith("llmservice: Prometheus metrics on"):
                metrics_port = int(line.rstrip().removesuffix("/metrics").rsplit(":", 1)[1])
            if line.startswith("llmservice: ready"):
                port = int(line.rsplit(":", 1)[1])
                break
        if not port:
            raise RuntimeError("llmservice serve did not become ready:\n" + "\n".join(said))
        yield ServeProcess(proc, port, http_port if http else -1, metrics_port, said)  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


@dataclass
class PluginProcess:
    proc: subprocess.Popen[str]
    target: str  # where it serves
    said: str  # its last line before it was handed over: serving, registered or refused


@contextlib.contextmanager
def echo_plugin(*args: str, admin_key: str = "") -> Iterator[PluginProcess]:
    """examples/echo_plugin as a process of its own, once it serves (and, given --register,
    once it says it registered or was refused); `admin_key` is the key it registers with."""
    argv = [sys.executable, str(ROOT / "examples" / "echo_plugin" / "echo_plugin.py"), *args]
    env = {**os.environ, "ECHO_PLUGIN_ADMIN_KEY": admin_key}
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    try:
        target = line = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (line := proc.stdout.readline()):
            if line.startswith("echo_plugin: serving on "):
                target = line.rstrip().rsplit(" ", 1)[1]
                if "--register" not in args:
                    break
            if line.startswith(("echo_plugin: registered", "echo_plugin: registration refused")):
                break
        if not target:
            raise RuntimeError("the echo plugin did not start")
        yield PluginProcess(proc, target, line.strip())
    finally:
        stop(proc)
        proc.stdout.close()
