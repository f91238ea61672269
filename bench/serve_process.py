"""`llmservice serve` in a process of its own, as the benchmarks' far side runs in its own."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Served:
    grpc_port: int
    http_url: str  # the shim's base URL, "" when it runs none


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
        yield Served(int(line.rsplit(":", 1)[1]), http_url)
    finally:
        proc.terminate()
        await proc.wait()


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]
