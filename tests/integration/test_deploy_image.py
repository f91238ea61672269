"""deploy/: the container health checks work against a real service and a real shim, and
the image builds where a container engine is reachable."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmservice.app import running_service
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.held_provider import HeldAtStart

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def image_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, run by this interpreter instead of the image's."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    argv: list[str] = json.loads(line.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


async def run(argv: list[str], env: dict[str, str] | None = None) -> int:
    """A command's exit code; the event loop keeps serving while it runs."""
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, env=env, timeout=60, check=False
    )
    return done.returncode


async def test_the_image_healthcheck_follows_grpc_health(settings: Settings) -> None:
    provider = HeldAtStart()
    ports: asyncio.Queue[int] = asyncio.Queue()
    ready = asyncio.Event()

    async def serve() -> None:
        async with running_service(settings, ports.put_nowait, ProviderRegistry({"held": provider}, "held")):
            ready.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(serve())
    try:
        port = await ports.get()
        env = {**os.environ, "LLMSERVICE_SERVER__GRPC_PORT": str(port)}
        assert await run(image_healthcheck(), env) == 1, "healthy while the model is not loaded"
        provider.release.set()
        await ready.wait()
        assert await run(image_healthcheck(), env) == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_compose_shim_healthcheck_passes_against_a_running_shim() -> None:
    test = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["shim"]["healthcheck"][
        "test"
    ]
    assert test[:2] == ["CMD", "python"]
    # No service behind it: the check must not depend on one.
    async with running_shim("127.0.0.1:1", "127.0.0.1", 0) as port:
        argv = [sys.executable, *test[2:]]
        argv[-1] = argv[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        assert await run(argv) == 0
    assert await run(argv) == 1, "the check passes with no shim listening"


def engine_unavailable() -> str:
    """Why no image can be built here, or '' when a container engine answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client on PATH"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    if info.returncode != 0:
        return "docker cannot reach a container engine: " + (info.stderr.strip().splitlines() or ["?"])[-1]
    return ""


@pytest.mark.slow
@pytest.mark.timeout(3600)  # compiles llama.cpp on a cold cache (~10 min on 2 cores)
def test_the_image_builds_and_runs_as_non_root() -> None:
    why = engine_unavailable()
    if why:
        pytest.skip(f"image build not run ({why}); deploy/Dockerfile is still linted by hadolint")
    tag = "llmservice:deploy-test"
    build = subprocess.run(
        ["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        timeout=3500,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-5000:]
    user = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Config.User}}", tag],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert user.stdout.strip() == "10001:10001"
