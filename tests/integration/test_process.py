"""The service as an operator runs it: `llmservice serve` in its own process, and the CLI."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from ..servers import llmservice_serve
from .conftest import Service

STORY = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Tell a story.")], max_tokens=60)


async def start_serve(*args: str) -> tuple[asyncio.subprocess.Process, int]:
    """`llmservice serve --grpc-port 0 ...`, once it says it is ready; returns (process, port)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmservice",
        "serve",
        "--grpc-port",
        "0",
        "--http-port",
        "-1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    while line := (await asyncio.wait_for(proc.stdout.readline(), 120)).decode():
        if line.startswith("llmservice: ready"):
            return proc, int(line.rsplit(":", 1)[1])
    raise AssertionError(f"serve exited with {await proc.wait()} before it was ready")


@pytest.fixture
async def served() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    proc, port = await start_serve("--set", "server.drain_grace_s=60")
    yield proc, port
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_sigterm_drains_in_flight_streams_then_exits_0(
    served: tuple[asyncio.subprocess.Process, int],
) -> None:
    proc, port = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

        stream = stub.StreamChat(STORY)
        chunks = [await stream.read()]
        proc.send_signal(signal.SIGTERM)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Chat(STORY)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        while (chunk := await stream.read()) is not grpc.aio.EOF:
            chunks.append(chunk)

    assert chunks[-1].done
    assert chunks[-1].completion_tokens == len(chunks) - 1
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_sigterm_when_idle_exits_at_once(served: tuple[asyncio.subprocess.Process, int]) -> None:
    proc, _ = served
    proc.send_signal(signal.SIGTERM)
    # The grace period is 60 s; an idle service must not wait it out.
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def cli(*args: str) -> tuple[int, bytes, bytes]:
    """Run `llmservice ARGS...` to the end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmservice",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_serve_rejects_bad_settings_naming_the_variable() -> None:
    code, _, err = await cli("serve", "--set", "llamacpp.n_ctx=lots")
    assert code == 2
    assert b"llamacpp.n_ctx [env LLMSERVICE_LLAMACPP__N_CTX]" in err


async def test_serve_refuses_gpu_offload_on_a_cpu_only_build_naming_the_setting_and_the_fix() -> None:
    code, _, err = await cli("serve", "--grpc-port", "0", "--set", "llamacpp.n_gpu_layers=10")
    assert code == 2
    assert b"llamacpp.n_gpu_layers asks for GPU offload" in err
    assert b"make install GPU=cuda" in err


async def test_serve_rejects_an_unknown_provider() -> None:
    code, _, err = await cli("serve", "--set", "provider=nope")
    assert code == 2
    assert b"'nope' [env LLM_PROVIDER] is not a known provider" in err


async def test_cli_chat_streams_tokens(service: Service) -> None:
    code, out, err = await cli("chat", "Say hello.", "--target", service.target, "--max-tokens", "5")
    assert code == 0, err
    assert out.strip()
    assert b"[5 tokens, FINISH_REASON_LENGTH]" in err


async def test_cli_chat_reports_errors(service: Service) -> None:
    code, _, err = await cli("chat", "hi", "--target", service.target, "--model", "nope")
    assert code == 1
    assert b"NOT_FOUND" in err


async def test_serve_runs_the_http_shim_beside_grpc_and_shim_runs_alone() -> None:
    import httpx

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmservice",
        "serve",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    shim: asyncio.subprocess.Process | None = None
    assert proc.stdout is not None
    try:
        http_url = ""
        while line := (await asyncio.wait_for(proc.stdout.readline(), 120)).decode():
            if line.startswith("llmservice: HTTP shim"):
                http_url = line.split(" on ", 1)[1].strip()
            if line.startswith("llmservice: ready"):
                grpc_port = int(line.rsplit(":", 1)[1])
                break
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{http_url}/v1/models")).json()["object"] == "list"
            shim = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "llmservice",
                "shim",
                "--target",
                f"127.0.0.1:{grpc_port}",
                "--http-port",
                "0",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert shim.stdout is not None
            line = (await asyncio.wait_for(shim.stdout.readline(), 60)).decode()
            alone = line.split(" on ", 1)[1].split(" for ", 1)[0]
            assert (await http.get(f"{alone}/v1/models")).json()["object"] == "list"
    finally:
        for p in (shim, proc):
            if p is not None and p.returncode is None:
                p.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(p.wait(), 60) == 0


@pytest.mark.parametrize(("setting", "frozen"), [("true", True), ("false", False)])
def test_serve_freezes_what_is_alive_once_started_unless_told_not_to(
    setting: str, frozen: bool, tmp_path: Path
) -> None:
    """server.gc_freeze (on by default): full garbage collections stop pausing requests."""
    log = tmp_path / "serve.log"
    with llmservice_serve(f"server.gc_freeze={setting}", "provider=", log=log):
        pass
    said = log.read_text()
    assert ("objects frozen out of garbage collection" in said) is frozen, said[-2000:]
