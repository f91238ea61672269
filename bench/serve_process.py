"""`llmservice serve` (and the benchmarks' other servers) in a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Served:
    grpc_port: int
    http_url: str  # the shim's base URL, "" when it runs none
    pid: int = 0


@contextlib.asynccontextmanager
async def llmservice_serve(*settings: str, http: bool = False) -> AsyncIterator[Served]:
    """The service with `--set` for each of `settings`, once it says it is ready; the shim too if `http`."""
    argv = ["serve", "--grpc-port", "0", "--http-port", "0" if http else "-1", "--set", "log_level=WARNING"]
    for setting in settings:
        argv += ["--set", setting]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmservice", *argv, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        http_url = ""
        while line := (await proc.stdout.readline()).decode():
            if line.startswith("llmservice: HTTP shim"):
                http_url = line.split(" on ", 1)[1].strip()
            if line.startswith("llmservice: ready"):
                break
        else:
            raise RuntimeError("llmservice serve exited before it was ready")
        yield Served(int(line.rsplit(":", 1)[1]), http_url, proc.pid)
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.contextmanager
def process_answering(
    argv: list[str], answers: Callable[[], bool], timeout_s: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` in a process of its own for the block (yielded), once `answers()` (an HTTP
    probe: a transport error means not yet) says it serves, or `timeout_s` has passed."""
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if answers():
                    break
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]
