"""Anthropic's refusals, as the vendor gate and the scripted fake both answer them: the
body and status Anthropic sends, word for word (README.md says where each was seen)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ..fakes.anthropic_server import fake_anthropic
from ..vendors.anthropic import KEY, gate
from ..vendors.anthropic.rules import REQUEST_ID
from ..vendors.replay import Received

HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
BODY = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
]


def _error(status: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"type": "error", "error": {"type": kind, "message": message}, "request_id": REQUEST_ID}


REFUSALS = [
    pytest.param(
        {"x-api-key": ""},
        {},
        _error(401, "authentication_error", "x-api-key header is required"),
        id="no key",
    ),
    pytest.param(
        {"x-api-key": "sk-ant-api03-someone-else"},
        {},
        _error(401, "authentication_error", "invalid x-api-key"),
        id="a key it does not know",
    ),
    pytest.param(
        {"anthropic-version": ""},
        {},
        _error(400, "invalid_request_error", "anthropic-version: header is required"),
        id="no version",
    ),
    pytest.param(
        {"anthropic-version": "2024-10-22"},
        {},
        _error(400, "invalid_request_error", 'anthropic-version: "2024-10-22" is not a valid version'),
        id="a version that is not one",
    ),
    pytest.param(
        {},
        {"temperature": 0.5, "top_p": 0.9},
        _error(
            400,
            "invalid_request_error",
            "`temperature` and `top_p` cannot both be specified for this model. Please use only one.",
        ),
        id="temperature beside top_p",
    ),
    pytest.param(
        {},
        {"messages": TOOL_TURNS},
        _error(
            400,
            "invalid_request_error",
            "Requests which include `tool_use` or `tool_result` blocks must define tools.",
        ),
        id="tool blocks without tools",
    ),
]


def _received(headers: dict[str, str], body: dict[str, Any]) -> Received:
    sent = {k: v for k, v in headers.items() if v}
    return Received("POST", "/v1/messages", {}, sent, json.dumps(body).encode())


@pytest.mark.parametrize(("headers", "body", "answer"), REFUSALS)
def test_the_gate_refuses_as_anthropic_does(
    headers: dict[str, str], body: dict[str, Any], answer: tuple[int, dict[str, Any]]
) -> None:
    refused = gate(_received({**HEADERS, **headers}, {**BODY, **body}))
    assert refused is not None
    assert (refused.status_code, json.loads(bytes(refused.body))) == answer


def test_the_gate_takes_a_request_anthropic_takes() -> None:
    tools = [{"name": "w", "description": "weather", "input_schema": {"type": "object"}}]
    assert gate(_received(HEADERS, BODY)) is None
    assert gate(_received(HEADERS, {**BODY, "temperature": 0.5, "top_k": 5})) is None
    assert gate(_received(HEADERS, {**BODY, "messages": TOOL_TURNS, "tools": tools})) is None


ANY_KEY_WILL_DO = [p for p in REFUSALS if p.id != "a key it does not know"]


@pytest.mark.parametrize(("headers", "body", "answer"), ANY_KEY_WILL_DO)
def test_the_scripted_fake_refuses_the_same(
    headers: dict[str, str], body: dict[str, Any], answer: tuple[int, dict[str, Any]]
) -> None:
    """The fake knows no one key: any key will do there, none will not."""
    with fake_anthropic() as upstream:
        sent = {k: v for k, v in {**HEADERS, **headers}.items() if v}
        response = httpx.post(f"{upstream.url}/v1/messages", headers=sent, json={**BODY, **body})
    assert (response.status_code, response.json()) == answer
    assert upstream.requests == []  # refused before any reply was taken
