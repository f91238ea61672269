"""Several workers on one port (server.workers): `llmservice serve` as a supervisor of worker
processes sharing the gRPC and HTTP ports, the bundled model loaded in worker 0 only, with
a real Redis for what workers share and real llama.cpp answering through every worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

from ..servers import ROOT, RedisServer, ServeProcess, free_port, llmservice_serve, redis_server

KEY = "worker-test-key"
QUESTION = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="user", content="What is 2 plus 3?")], max_tokens=24, temperature=0
)
AUTH = (("authorization", f"Bearer {KEY}"),)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def workers(redis: RedisServer) -> Iterator[ServeProcess]:
    """Two workers on the bundled model, keys required, metrics on."""
    with llmservice_serve(
        "server.workers=2",
        f"cache.redis_url={redis.url}",
        "server.metrics_port=0",
        "auth.principals.tester.key_env=WORKER_TEST_KEY",
        http=True,
        env={"WORKER_TEST_KEY": KEY},
    ) as served:
        yield served


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def maps_a_model(pid: int) -> bool:
    return ".gguf" in Path(f"/proc/{pid}/maps").read_text()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_by_worker(port: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for (name, labels), value in scrape(port).items():
        if name == "llmservice_requests_total":
            worker = dict(labels)["worker"]
            counts[worker] = counts.get(worker, 0) + value
    return counts


async def ask_on_new_connections(target: str, n: int) -> list[str]:
    """`n` questions, each on a channel of its own (so the kernel spreads them over workers)."""

    async def one() -> str:
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await pb_grpc.LLMServiceStub(channel).Chat(QUESTION, metadata=AUTH, timeout=60)
            return str(reply.content)

    return [await one() for _ in range(n)]


def test_the_supervisor_says_how_many_and_the_model_is_loaded_once(workers: ServeProcess) -> None:
    assert any("ready (2 workers), SERVING" in line for line in workers.said)
    pids = children(workers.proc.pid)
    assert len(pids) == 2
    assert sorted(maps_a_model(pid) for pid in pids) == [False, True]  # one copy of the model


async def test_every_worker_answers_grpc_with_the_local_model(workers: ServeProcess) -> None:
    replies = await ask_on_new_connections(workers.target, 24)
    assert all("5" in reply for reply in replies), replies
    counts = requests_by_worker(workers.metrics_port)
    assert set(counts) == {"0", "1"}
    # worker 1 forwards to worker 0, which counts those calls again under the workers' principal
    assert counts["1"] > 0, counts
    assert counts["0"] > 0, counts


async def test_every_worker_answers_the_openai_sdk(workers: ServeProcess) -> None:
    for _ in range(12):  # a client of its own each time: a connection of its own
        async with openai.AsyncOpenAI(
            base_url=workers.base_url + "/v1", api_key=KEY, max_retries=0
        ) as client:
            reply = await client.chat.completions.create(
                model="",
                messages=[{"role": "user", "content": "What is 2 plus 3?"}],
                max_tokens=24,
                temperature=0,
            )
        assert "5" in (reply.choices[0].message.content or "")


async def test_a_wrong_key_is_refused_by_every_worker(workers: ServeProcess) -> None:
    for _ in range(8):
        async with grpc.aio.insecure_channel(workers.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.LLMServiceStub(channel).Chat(
                    QUESTION, metadata=(("authorization", "Bearer nope"),), timeout=10
                )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_metrics_have_every_worker_and_say_they_are_up(workers: ServeProcess) -> None:
    samples = scrape(workers.metrics_port)
    up = {
        dict(labels)["worker"]: value
        for (name, labels), value in samples.items()
        if name == "llmservice_worker_up"
    }
    assert up == {"0": 1.0, "1": 1.0}
    active = [
        dict(labels)["worker"]
        for (name, labels), _ in samples.items()
        if name == "llmservice_chat_sessions_active"
    ]
    assert sorted(active) == ["0", "1"]  # each worker's own series


def test_a_worker_that_dies_takes_the_others_down(redis: RedisServer) -> None:
    with llmservice_serve("server.workers=2", f"cache.redis_url={redis.url}", "provider=") as served:
        pids = children(served.proc.pid)
        os.kill(pids[-1], signal.SIGKILL)
        assert served.proc.wait(30) == 1
        time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_drains_every_worker_and_exits_0(redis: RedisServer) -> None:
    with llmservice_serve("server.workers=2", f"cache.redis_url={redis.url}", "provider=") as served:
        pids = children(served.proc.pid)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0
        assert not any(_alive(pid) for pid in pids)


def _serve_fails(*settings: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llmservice", "serve", "--grpc-port", "0", "--http-port", "-1"]
    for setting in settings:
        argv += ["--set", setting]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_several_workers_without_redis_is_a_clear_error() -> None:
    done = _serve_fails("server.workers=2", "provider=")
    assert done.returncode == 2
    assert "server.workers = 2" in done.stderr
    assert "cache.redis_url" in done.stderr


def test_one_worker_refuses_a_port_another_service_listens_on() -> None:
    """gRPC shares ports by default on Linux; a second service on a port in use must fail, not
    take half of the first one's connections."""
    port = free_port()
    with llmservice_serve("provider=", grpc_port=port):
        argv = [sys.executable, "-m", "llmservice", "serve", "--grpc-port", str(port), "--http-port", "-1"]
        done = subprocess.run(
            [*argv, "--set", "provider="], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2
        assert f"llmservice: cannot listen on 127.0.0.1:{port}: in use" in done.stderr


def test_the_supervisor_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with redis_server() as redis:
            argv = [
                sys.executable,
                "-m",
                "llmservice",
                "serve",
                "--grpc-port",
                str(port),
                "--http-port",
                "-1",
            ]
            argv += [
                "--set",
                "server.workers=2",
                "--set",
                f"cache.redis_url={redis.url}",
                "--set",
                "provider=",
            ]
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
