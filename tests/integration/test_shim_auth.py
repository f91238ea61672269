"""Auth through the shim: the service decides, the shim answers in OpenAI's shape."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from llmservice.app import running_service
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.openai_server import fake_openai

KEY_A, KEY_B = "sk-shim-team-a", "sk-shim-team-b"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    with fake_openai() as upstream:
        settings = Settings.model_validate(
            {
                "provider": "openai",
                "server": {"grpc_port": 0},
                "openai": {"api_key": "k", "base_url": upstream.url + "/v1", "model": "fake-model"},
                "auth": {
                    "principals": {
                        "a": {
                            "key_sha256": hashlib.sha256(KEY_A.encode()).hexdigest(),
                            "models": ["fake-model"],
                        },
                        "b": {"key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(), "models": ["other"]},
                    }
                },
            }
        )
        async with (
            running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
            running_shim(
                f"127.0.0.1:{server.port}", "127.0.0.1", 0, connect=server.in_process_channel
            ) as port,
        ):
            yield f"http://127.0.0.1:{port}/v1"


def client(base_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0)


async def test_no_key_is_401_in_openais_shape(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base_url}/chat/completions", json={"model": "fake-model", "messages": HI}
        )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_a_wrong_key_is_401_without_hints(base_url: str) -> None:
    async with client(base_url, "sk-wrong") as c:
        for call in (c.chat.completions.create(model="fake-model", messages=HI), c.models.list()):  # type: ignore[arg-type]
            with pytest.raises(openai.AuthenticationError) as raised:
                await call
            assert raised.value.status_code == 401
            assert "sk-shim" not in str(raised.value)


async def test_a_caller_sees_and_uses_its_models(base_url: str) -> None:
    async with client(base_url, KEY_A) as c:
        reply = await c.chat.completions.create(model="fake-model", messages=HI)  # type: ignore[arg-type]
        models = [m.id async for m in c.models.list()]
    assert reply.choices[0].message.content == "Hello there"
    assert models == ["fake-model"]


async def test_a_hidden_model_is_404_like_a_missing_one(base_url: str) -> None:
    async with client(base_url, KEY_B) as c:
        for model in ("fake-model", "no-such-model"):
            with pytest.raises(openai.NotFoundError) as raised:
                await c.chat.completions.create(model=model, messages=HI, stream=True)  # type: ignore[arg-type]
            assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await c.models.retrieve("fake-model")
        assert [m async for m in c.models.list()] == []


@pytest.mark.parametrize(
    "authorization", [f"Basic {KEY_A}", KEY_A, "Bearer", f"Bearer{KEY_A}", f"Token {KEY_A}"], ids=repr
)
async def test_a_malformed_authorization_header_is_401(base_url: str, authorization: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base_url}/chat/completions",
            json={"model": "fake-model", "messages": HI},
            headers={"Authorization": authorization},
        )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert "sk-shim" not in error["message"]


async def test_a_streaming_request_with_a_wrong_key_is_401_before_any_stream_byte(base_url: str) -> None:
    async with client(base_url, "sk-wrong") as c:
        with pytest.raises(openai.AuthenticationError) as raised:
            await c.chat.completions.create(model="fake-model", messages=HI, stream=True)  # type: ignore[arg-type]
    assert raised.value.status_code == 401
    assert raised.value.response.headers["content-type"].startswith("application/json")
