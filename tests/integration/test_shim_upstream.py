"""The shim in front of a remote provider (a fake OpenAI upstream): failures after a stream
started, and what the service announces at start-up."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest

from llmservice.app import running_service
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.openai_server import Reply, fake_openai
from ..fakes.upstream import Upstream

HI = [{"role": "user", "content": "Hi"}]


def _settings(upstream: Upstream, **extra: object) -> Settings:
    return Settings.model_validate(
        {
            "provider": "openai",
            "server": {"grpc_port": 0},
            "openai": {"api_key": "k", "base_url": upstream.url + "/v1", "model": "fake-model"},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with fake_openai(Reply(text="one two three four", error_midway="the upstream is overloaded")) as fake:
        yield fake


@pytest.fixture(scope="module")
async def base_url(upstream: Upstream) -> AsyncIterator[str]:
    settings = _settings(upstream)
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0, connect=server.in_process_channel) as port,
    ):
        yield f"http://127.0.0.1:{port}/v1"


async def test_a_stream_that_fails_midway_ends_with_an_error_frame(base_url: str) -> None:
    body = {"model": "fake-model", "messages": HI, "stream": True}
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{base_url}/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200  # it started well
        frames = [line.removeprefix("data: ") async for line in r.aiter_lines() if line.startswith("data: ")]
    assert frames[-1] != "[DONE]"
    error = json.loads(frames[-1])["error"]
    assert error["type"] == "service_unavailable"
    assert "overloaded" in error["message"]
    text = "".join(json.loads(f)["choices"][0]["delta"].get("content", "") for f in frames[:-1])
    assert text == "one "  # a token came before the failure


async def test_the_openai_client_raises_on_the_error_frame(base_url: str) -> None:
    async with openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0) as client:
        stream = await client.chat.completions.create(model="fake-model", messages=HI, stream=True)  # type: ignore[arg-type]
        text: list[str] = []

        async def read() -> None:
            async for chunk in stream:
                text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

        with pytest.raises(openai.APIError, match="overloaded"):
            await read()
    assert "".join(text) == "one "


async def test_open_local_mode_is_announced_at_start_up(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    async def start(settings: Settings) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="llmservice"):
            async with running_service(settings, registry=ProviderRegistry.from_settings(settings)):
                pass
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert any("open local mode" in m for m in await start(_settings(upstream)))
    keyed = _settings(upstream, auth={"principals": {"a": {"key_sha256": "0" * 64, "models": ["*"]}}})
    assert not any("open local mode" in m for m in await start(keyed))
