"""The supervisor `llmservice serve` becomes with several workers: it holds the ports, starts
the workers (the engine worker first), serves their metrics as one /metrics, passes SIGTERM
on, and stops them all when one of them dies (so that an orchestrator restarts the whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmservice.kernel.settings import SettingsError
from llmservice.observability.metrics import served
from llmservice.service.settings import Settings
from llmservice.workers import KEY_ENV, WorkerRole
from llmservice.workers.metrics import WorkerMetrics, registry_of

log = logging.getLogger(__name__)

SESSION_KEY_ENV = "LLMCHAT_SECRET_KEY"  # llmchat.secret_key's documented variable
_READY = "llmservice: ready"
_METRICS = re.compile(r"^llmservice: Prometheus metrics on (http://\S+/metrics)")


@dataclass
class _Worker:
    role: WorkerRole
    proc: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    metrics_url: str = ""
    relay: asyncio.Task[None] | None = None


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: a free port) with SO_REUSEPORT and not listening: it
    keeps the port for the workers, which bind it the same way, and takes no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]") or "0.0.0.0", port))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def worker_argv(
    config: Path | None, overrides: Sequence[str], role: WorkerRole, ports: tuple[int, int], metrics: bool
) -> list[str]:
    """The command line of one worker: the supervisor's own settings, then what it fixes."""
    grpc_port, http_port = ports
    argv = [sys.executable, "-m", "llmservice", "serve"]
    if config is not None:
        argv += ["--config", str(config)]
    fixed = [
        *overrides,
        "server.workers=1",
        f"server.grpc_port={grpc_port}",
        f"server.http_port={http_port}",
        f"server.metrics_port={0 if metrics else -1}",
        "registry.enabled=false",
    ]
    for item in fixed:
        argv += ["--set", item]
    return [*argv, "--worker", role.to_json()]


async def supervise(settings: Settings, count: int, config: Path | None, overrides: Sequence[str]) -> int:
    """Run `count` workers until SIGTERM or SIGINT (0) or until one of them exits (1)."""
    host, s = settings.server.host, settings.server
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.ExitStack() as held:
        grpc_sock = held.enter_context(reserve_port(host, s.grpc_port))
        http_port = -1
        if s.http_port >= 0:
            http_port = held.enter_context(reserve_port(host, s.http_port)).getsockname()[1]
        grpc_port = grpc_sock.getsockname()[1]
        engine = ""
        if settings.provider in _local_kinds():
            folder = held.enter_context(tempfile.TemporaryDirectory(prefix="llmservice-"))
            engine = f"unix:{folder}/engine.sock"
        env = {**os.environ, KEY_ENV: secrets.token_urlsafe(32)}
        if settings.llmchat.secret_key is None:  # sessions move between workers, as between replicas
            env[SESSION_KEY_ENV] = secrets.token_urlsafe(32)
            log.warning(
                "llmchat.secret_key is not set: the workers share one made for this run "
                "(sessions move between them, not to other replicas)"
            )
        metrics_on = s.metrics_port >= 0
        roles = [WorkerRole(i, engine) for i in range(count)]

        workers: list[_Worker] = []

        async def start(role: WorkerRole) -> _Worker:
            argv = worker_argv(config, overrides, role, (grpc_port, http_port), metrics_on)
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, env=env)
            worker = _Worker(role, proc)
            worker.relay = asyncio.create_task(_relay(worker), name=f"worker {role.index} output")
            workers.append(worker)
            return worker

        print(f"llmservice: {count} workers on {host}:{grpc_port} (starting worker 0 first)", flush=True)
        try:
            first = await start(roles[0])
            if not await _until_ready([first], stop):
                return await _stop_all(workers, 1 if not stop.is_set() else 0)
            rest = [await start(role) for role in roles[1:]]
            if not await _until_ready(rest, stop):
                return await _stop_all(workers, 1 if not stop.is_set() else 0)
            print(f"llmservice: gRPC listening on {host}:{grpc_port} ({count} workers)", flush=True)
            if http_port >= 0:
                print(f"llmservice: HTTP shim (OpenAI API) on http://{host}:{http_port}", flush=True)
            metrics = WorkerMetrics([(w.role.index, w.metrics_url) for w in workers if w.metrics_url])
            with served(registry_of(metrics), host, s.metrics_port) as port:
                if port >= 0:
                    print(f"llmservice: Prometheus metrics on http://{host}:{port}/metrics", flush=True)
                print(f"llmservice: ready ({count} workers), SERVING on {host}:{grpc_port}", flush=True)
                died = asyncio.create_task(_first_exit(workers))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait([died, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if died.done():
                    index, code = died.result()
                    print(f"llmservice: worker {index} exited ({code}); stopping the others", flush=True)
                    return await _stop_all(workers, 1)
                died.cancel()
                print(f"llmservice: draining {count} workers", flush=True)
                code = await _stop_all(workers, 0)
                print("llmservice: stopped", flush=True)
                return code
        finally:
            for worker in workers:
                if worker.proc.returncode is None:
                    worker.proc.kill()
                    await worker.proc.wait()


def _local_kinds() -> set[str]:
    from llmservice.providers import entries

    return {kind for kind, entry in entries().items() if entry.local}


async def _relay(worker: _Worker) -> None:
    """A worker's stdout on ours, each line prefixed with its index; notes its readiness and
    where its metrics are."""
    assert worker.proc.stdout is not None
    index = worker.role.index
    async for raw in worker.proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith(_READY):
            worker.ready.set()
        if found := _METRICS.match(line):
            worker.metrics_url = found.group(1)
        print(f"[worker {index}] {line}", flush=True)


async def _until_ready(workers: Sequence[_Worker], stop: asyncio.Event) -> bool:
    """Whether all became ready before one exited or a signal came."""
    ready: asyncio.Future[Any] = asyncio.gather(*(w.ready.wait() for w in workers))
    died = asyncio.create_task(_first_exit(workers))
    stopping: asyncio.Future[Any] = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([ready, died, stopping], return_when=asyncio.FIRST_COMPLETED)
        if died.done():
            index, code = died.result()
            print(f"llmservice: worker {index} exited ({code}) before it was ready", flush=True)
            return False
        return ready.done()
    finally:
        for task in (ready, died, stopping):
            task.cancel()


async def _first_exit(workers: Sequence[_Worker]) -> tuple[int, int]:
    waits = {asyncio.create_task(w.proc.wait()): w for w in workers}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    worker = waits[next(iter(done))]
    return worker.role.index, worker.proc.returncode or 0


async def _stop_all(workers: Sequence[_Worker], code: int) -> int:
    """SIGTERM to every worker still running (each drains within its grace), then wait for all."""
    for worker in _running(workers):
        worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        await worker.proc.wait()
        if worker.relay is not None:
            await worker.relay
    return code or int(any(w.proc.returncode for w in workers))


def _running(workers: Sequence[_Worker]) -> Iterator[_Worker]:
    return (w for w in workers if w.proc.returncode is None)
