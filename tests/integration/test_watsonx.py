"""watsonx: the IAM token is fetched once, refreshed before it expires and when refused; the
recorded-traffic gate and the scripted fake refuse what watsonx refuses, in its words."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from llmservice.kernel.errors import InvalidRequest, ProviderAuthFailed
from llmservice.kernel.types import ChatRequest, Message
from llmservice.providers.watsonx.provider import WatsonxProvider
from llmservice.providers.watsonx.settings import WatsonxSettings

from ..fakes.upstream import Reply, Upstream
from ..fakes.watsonx_server import Tokens, fake_watsonx
from ..vendors.replay import load, replaying
from ..vendors.watsonx import GRANT, VENDOR
from ..vendors.watsonx import KEY as VENDOR_KEY

KEY = "wx-api-key-0123456789"
HELLO = ChatRequest((Message("user", "Hi"),))


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def watsonx(
    tokens: Tokens, clock: Clock | None = None, key: str = KEY
) -> AsyncIterator[tuple[WatsonxProvider, Upstream]]:
    with fake_watsonx(api_key=KEY, tokens=tokens) as upstream:
        settings = WatsonxSettings(
            api_key=SecretStr(key),
            url=upstream.url,
            iam_url=upstream.url,
            project_id="proj-1",
            model="ibm/granite",
        )
        provider = WatsonxProvider(settings, clock=clock or Clock())
        async with provider:
            yield provider, upstream


async def test_one_token_serves_many_calls_and_the_request_names_the_project() -> None:
    tokens = Tokens(KEY)
    async with watsonx(tokens) as (provider, upstream):
        for _ in range(3):
            await provider.complete("ibm/granite", HELLO)
        [e async for e in provider.stream("ibm/granite", HELLO)]
    assert tokens.issued == 1
    assert {r["project_id"] for r in upstream.requests} == {"proj-1"}
    assert {r["model_id"] for r in upstream.requests} == {"ibm/granite"}


async def test_a_token_is_refreshed_a_minute_before_it_expires() -> None:
    tokens, clock = Tokens(KEY, ttl_s=3600), Clock()
    async with watsonx(tokens, clock) as (provider, _):
        await provider.complete("ibm/granite", HELLO)
        clock.now += 3600 - 61
        await provider.complete("ibm/granite", HELLO)
        clock.now += 2
        await provider.complete("ibm/granite", HELLO)
    assert tokens.issued == 2


async def test_a_token_the_service_calls_expired_is_replaced_and_the_call_goes_through() -> None:
    tokens = Tokens(KEY)
    async with watsonx(tokens) as (provider, _):
        await provider.complete("ibm/granite", HELLO)
        tokens.expire_all()
        completion = await provider.complete("ibm/granite", HELLO)
        tokens.expire_all()
        streamed = [e async for e in provider.stream("ibm/granite", HELLO)]
    assert completion.text == "Hello there"
    assert streamed
    assert tokens.issued == 3


async def test_an_unknown_api_key_is_a_rejected_credential_without_the_key() -> None:
    async with watsonx(Tokens(KEY), key="wx-wrong-key-9876543210") as (provider, _):
        with pytest.raises(ProviderAuthFailed) as raised:
            await provider.complete("ibm/granite", HELLO)
    assert "IAM rejected" in raised.value.message
    assert "wx-wrong" not in raised.value.message


async def test_expiry_is_told_by_the_error_code_not_the_words() -> None:
    """A 401 whose text says 'expired' but whose code is not watsonx's token-expired code is
    a rejected credential: no new token, no second try."""
    tokens = Tokens(KEY)
    script = (Reply(status=401, error="your entitlement has expired"),)
    with fake_watsonx(*script, api_key=KEY, tokens=tokens) as upstream:
        settings = WatsonxSettings(
            api_key=SecretStr(KEY), url=upstream.url, iam_url=upstream.url, project_id="p", model="m"
        )
        async with WatsonxProvider(settings) as provider:
            for call in (provider.complete("m", HELLO), anext(aiter(provider.stream("m", HELLO)))):
                with pytest.raises(ProviderAuthFailed):
                    await call
    assert tokens.issued == 1
    assert len(upstream.requests) == 2  # one each, neither retried with a fresh token


async def test_the_replay_gate_refuses_in_watsonx_words_what_watsonx_refuses() -> None:
    """The recorded-traffic gate (tests/vendors/watsonx) plays IAM and holds watsonx's rules:
    a bearer token from IAM, the `version` parameter, and a project or a space."""
    with replaying([load(VENDOR.directory, "chat")], VENDOR.gate) as replay:
        async with httpx.AsyncClient(base_url=replay.url) as client:
            unknown = await client.post("/identity/token", data={"grant_type": GRANT, "apikey": "nope"})
            exchange = await client.post("/identity/token", data={"grant_type": GRANT, "apikey": VENDOR_KEY})
            auth = {"Authorization": f"Bearer {exchange.json()['access_token']}"}
            version = {"version": "2025-04-23"}
            calls = {
                "no token": await client.post("/ml/v1/text/chat", params=version, json={"project_id": "p"}),
                "no version": await client.post("/ml/v1/text/chat", json={"project_id": "p"}, headers=auth),
                "no project": await client.post(
                    "/ml/v1/text/chat_stream", params=version, json={"model_id": "m"}, headers=auth
                ),
                "a space": await client.post(
                    "/ml/v1/text/chat", params=version, json={"space_id": "s"}, headers=auth
                ),
            }
    assert (unknown.status_code, unknown.json()["errorCode"]) == (400, "BXNIM0415E")
    assert exchange.json()["token_type"] == "Bearer"
    assert exchange.json()["expiration"] > time.time()
    codes = {what: (r.status_code, r.json().get("errors", [{}])[0].get("code")) for what, r in calls.items()}
    assert codes == {
        "no token": (401, "authentication_token_not_valid"),
        "no version": (400, "missing_query_parameter"),
        "no project": (400, "invalid_request_entity"),
        "a space": (200, None),
    }
    assert calls["no project"].json()["errors"][0]["more_info"].endswith("#text-chat-stream")
    assert replay.answered == 1


async def test_a_key_iam_refuses_is_a_rejected_credential_and_no_chat_call() -> None:
    with replaying([load(VENDOR.directory, "chat")], VENDOR.gate) as replay:
        settings = WatsonxSettings(
            api_key=SecretStr("wx-unknown-key-0123"), url=replay.url, iam_url=replay.url, project_id="p"
        )
        async with WatsonxProvider(settings) as provider:
            with pytest.raises(ProviderAuthFailed) as raised:
                await provider.complete("m", HELLO)
    assert "IAM rejected" in raised.value.message
    assert "wx-unknown" not in raised.value.message
    assert [r.path for r in replay.received] == ["/identity/token"]


async def test_the_scripted_fake_holds_the_gates_rules() -> None:
    """The fake refuses a call without a project as the gate does: one copy of the rules."""
    with fake_watsonx(api_key=KEY) as upstream:
        settings = WatsonxSettings(
            api_key=SecretStr(KEY), url=upstream.url, iam_url=upstream.url, project_id=""
        )
        async with WatsonxProvider(settings) as provider:
            with pytest.raises(InvalidRequest) as raised:
                await provider.complete("ibm/granite", HELLO)
    assert "Missing either space_id or project_id" in raised.value.message
    assert upstream.requests == []
