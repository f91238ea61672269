"""Anthropic's Messages API on the shim, driven by the official anthropic client: on the
bundled model, and on a remote provider (a fake OpenAI upstream) behind the service."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.rest.anthropic import codec
from llmservice.rest.anthropic import protocol as an
from llmservice.rest.server import running_shim

from ..fakes.openai_server import Reply
from ..fakes.upstream import Upstream
from .conftest import Service, eventually, shim_in_front_of_fake_openai

ARITHMETIC = [{"role": "user", "content": "What is 2+2?"}]
HELLO = [{"role": "user", "content": "Name three colours."}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
GET_WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EVENTS = re.compile(
    r"message_start (content_block_start (content_block_delta )*content_block_stop )*"
    r"message_delta message_stop"
)


@pytest.fixture(scope="module")
async def root(service: Service) -> AsyncIterator[str]:
    async with running_shim(service.target, "127.0.0.1", 0, connect=service.in_process) as port:
        yield f"http://127.0.0.1:{port}"  # the SDK adds /v1 itself


@pytest.fixture
async def client(root: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="unused", base_url=root, max_retries=0) as client:
        yield client


def _text(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


async def test_a_message_answers_and_counts_its_tokens(client: anthropic.AsyncAnthropic) -> None:
    reply = await client.messages.create(model="", max_tokens=30, messages=ARITHMETIC)
    assert re.search(r"\b4\b|\bfour\b", _text(reply), re.I), reply
    assert reply.id.startswith("msg_")
    assert (reply.type, reply.role, reply.stop_reason, reply.stop_sequence) == (
        "message",
        "assistant",
        "end_turn",
        None,
    )
    assert reply.model  # the model that answered, though the request named none
    usage = reply.usage
    # The prompt is input_tokens and the cache's part of it together; all of it may be cached
    # when an earlier test asked the same question.
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) > 0
    assert 0 < usage.output_tokens < 30
    assert usage.cache_creation_input_tokens == 0
    counted = await client.messages.count_tokens(model="", messages=ARITHMETIC)
    # Anthropic's input_tokens leave out the cached ones: the prompt is both together.
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


async def test_a_system_prompt_and_text_blocks_are_read(client: anthropic.AsyncAnthropic) -> None:
    reply = await client.messages.create(
        model="",
        max_tokens=20,
        system=[{"type": "text", "text": "Your name is Zorblax.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is your name?"}]}],
    )
    assert "Zorblax" in _text(reply)


async def test_a_repeated_prompt_is_read_from_the_prompt_cache(client: anthropic.AsyncAnthropic) -> None:
    ask = [{"role": "user", "content": "Name three animals that live in the sea."}]
    first = await client.messages.create(model="", max_tokens=2, messages=ask)
    again = await client.messages.create(model="", max_tokens=2, messages=ask)
    assert (again.usage.cache_read_input_tokens or 0) > 0
    assert first.stop_reason == again.stop_reason == "max_tokens"
    prompt = [u.input_tokens + (u.cache_read_input_tokens or 0) for u in (first.usage, again.usage)]
    assert prompt[0] == prompt[1]


async def test_a_stream_sends_anthropics_events_and_agrees_with_the_whole_reply(
    client: anthropic.AsyncAnthropic,
) -> None:
    whole = await client.messages.create(model="", max_tokens=12, messages=HELLO)
    async with client.messages.stream(model="", max_tokens=12, messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == _text(final) == _text(whole)
    assert final.stop_reason == whole.stop_reason == "max_tokens"
    assert final.usage.output_tokens == whole.usage.output_tokens == 12
    prompt = [u.input_tokens + (u.cache_read_input_tokens or 0) for u in (whole.usage, final.usage)]
    assert prompt[0] == prompt[1] > 0
    # The events themselves, in Anthropic's order.
    types = []
    async with client.messages.stream(model="", max_tokens=4, messages=HELLO) as stream:
        async for event in stream:
            if event.type not in ("text", "input_json"):  # the SDK's own, after each delta
                types.append(event.type)
    assert EVENTS.fullmatch(" ".join(types)), types
    assert types.count("content_block_start") == 1


async def test_a_stop_sequence_ends_the_reply_before_it(client: anthropic.AsyncAnthropic) -> None:
    reply = await client.messages.create(model="", max_tokens=60, messages=HELLO, stop_sequences=["\n"])
    assert "\n" not in _text(reply)
    assert reply.stop_reason == "end_turn"  # the service does not say that a stop sequence ended it
    assert reply.usage.output_tokens < 60


# The engine compiles the grammar of a named tool choice on its first use: over a minute
# on a loaded 2-core host when no other test compiled it first.
@pytest.mark.timeout(300)
async def test_a_tool_is_called_and_its_result_answered(client: anthropic.AsyncAnthropic) -> None:
    choice = {"type": "tool", "name": "get_weather"}
    whole = await client.messages.create(
        model="",
        max_tokens=60,
        messages=WEATHER,
        tools=[GET_WEATHER],
        tool_choice=choice,
    )
    assert whole.stop_reason == "tool_use"
    calls = [b for b in whole.content if b.type == "tool_use"]
    assert [c.name for c in calls] == ["get_weather"]
    assert calls[0].input == {"city": "Paris"}
    async with client.messages.stream(
        model="",
        max_tokens=60,
        messages=WEATHER,
        tools=[GET_WEATHER],
        tool_choice=choice,
    ) as stream:
        partial = [e.partial_json async for e in stream if e.type == "input_json"]
        final = await stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert json.loads("".join(partial)) == streamed[0].input == calls[0].input
    assert final.stop_reason == "tool_use"
    # The reply goes back as history, as the SDK sends it, with the tool's result.
    result = {"type": "tool_result", "tool_use_id": calls[0].id, "content": "Sunny, 21 degrees"}
    answer = await client.messages.create(
        model="",
        max_tokens=20,
        messages=[*WEATHER, whole.to_param(), {"role": "user", "content": [result]}],
        tools=[GET_WEATHER],
        tool_choice={"type": "none"},
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in answer.content] == ["text"]
    assert re.search(r"sunny|21", _text(answer), re.I), answer  # it answers from the tool's result


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frobnicate": 1}, "frobnicate"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"top_k": 2**31}, "top_k"),
        ({"temperature": 5}, "temperature"),  # refused by the service, named by the shim
    ],
)
async def test_what_is_not_honoured_is_a_400_in_anthropics_shape(
    client: anthropic.AsyncAnthropic, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        await client.messages.create(model="", max_tokens=4, messages=HELLO, extra_body=extra)
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == raised.value.type == "invalid_request_error"
    assert body["error"]["message"].startswith(f"{param}: ")


async def test_bad_bodies_are_400s_naming_the_parameter(root: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "", "messages": HELLO}, "max_tokens"),  # Anthropic requires it
        (
            {"model": "", "max_tokens": 4, "messages": [{"role": "user", "content": "hi", "x": 1}]},
            "messages[0].x",
        ),
        (
            {
                "model": "",
                "max_tokens": 4,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}],
                    }
                ],
            },
            "messages[0].content[0].source",  # the service fetches nothing
        ),
        ({"model": "", "max_tokens": 4, "messages": HELLO}, "max_tokens"),  # not for count_tokens
    ]
    async with httpx.AsyncClient() as http:
        for i, (body, param) in enumerate(cases):
            path = "/v1/messages/count_tokens" if i == len(cases) - 1 else "/v1/messages"
            response = await http.post(root + path, json=body, headers={"anthropic-version": "2023-06-01"})
            assert response.status_code == 400, response.text
            error = response.json()
            assert (error["type"], error["error"]["type"]) == ("error", "invalid_request_error")
            assert error["error"]["message"].startswith(f"{param}: "), error
        response = await http.post(root + "/v1/messages", content=b"{not json")
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_an_image_reaches_the_service_which_refuses_it_on_a_text_only_model(
    client: anthropic.AsyncAnthropic,
) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError, match="image/png"):
        await client.messages.create(
            model="",
            max_tokens=4,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}],
        )


async def test_an_unknown_model_is_a_404_before_any_stream_byte(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        await client.messages.create(model="no-such-model", max_tokens=4, messages=HELLO)
    assert raised.value.type == "not_found_error"
    with pytest.raises(anthropic.NotFoundError, match="no-such-model"):
        async with client.messages.stream(model="no-such-model", max_tokens=4, messages=HELLO):
            pass


async def test_a_client_that_leaves_a_stream_stops_generation(root: str, service: Service) -> None:
    body = {"model": "", "messages": HELLO, "max_tokens": 400, "stream": True}
    before = service.tokens_generated
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{root}/v1/messages", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: content_block_delta"):
                break
    await eventually(lambda: service.engine.held_sequences == 0, timeout_s=60)
    assert service.tokens_generated - before < body["max_tokens"]


def test_the_request_becomes_the_services_turns_and_parameters() -> None:
    """What no upstream shows on its wire: the conversion itself."""
    req = an.MessageCreateRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 9,
            "top_k": 3,
            "metadata": {"user_id": "user-7"},
            "tools": [GET_WEATHER],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "Rain"}],
                        },
                        {"type": "text", "text": "And tomorrow?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"},
                        },
                    ],
                },
            ],
        }
    )
    msg = codec.to_grpc(req)
    assert (msg.user, msg.top_k, msg.max_tokens, msg.parallel_tool_calls) == ("user-7", 3, 9, False)
    assert (msg.tool_choice.mode, msg.tool_choice.name) == (pb.ToolChoice.MODE_FUNCTION, "get_weather")
    assert [(m.role, m.content, m.tool_call_id) for m in msg.messages] == [
        ("user", "Weather?", ""),
        ("assistant", "Let me look.", ""),
        ("tool", "Rain", "t1"),
        ("user", "And tomorrow?", ""),
    ]
    assert json.loads(msg.messages[1].tool_calls[0].arguments_json) == {"city": "Oslo"}
    assert [(a.mime_type, a.data) for a in msg.attachments] == [("image/gif", "data:image/gif;base64,R0lG")]


# A remote provider behind the service: a fake OpenAI upstream, scripted per test.

KEY_A = "sk-shim-anthropic-a"


@contextlib.asynccontextmanager
async def _remote(*script: Reply, keyed: bool = False) -> AsyncIterator[tuple[str, Upstream]]:
    """(the shim's root URL, the upstream) of a service in front of a fake OpenAI; with
    `keyed`, one principal with the key KEY_A."""
    auth = {"principals": {"a": {"key_sha256": hashlib.sha256(KEY_A.encode()).hexdigest(), "models": ["*"]}}}
    async with shim_in_front_of_fake_openai(*script, **({"auth": auth} if keyed else {})) as remote:
        yield remote


def _sdk(root: str, key: str = "unused") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=root, max_retries=0)


async def test_a_remote_model_answers_whole_and_streamed() -> None:
    async with _remote(Reply(text="one two three", cached_tokens=2)) as (root, upstream), _sdk(root) as c:
        ask: dict[str, Any] = {
            "model": "fake-model",
            "max_tokens": 8,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "user-7"},
            "extra_body": {"temperature": 0.5, "top_p": 0.9},
        }
        whole = await c.messages.create(**ask)
        async with c.messages.stream(**ask) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert _text(whole) == text == _text(final) == "one two three"
    for usage in (whole.usage, final.usage):  # of the fake's 5 prompt tokens, 2 came from its cache
        assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (3, 2, 3)
    assert whole.model == final.model == "fake-model"
    sent = upstream.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\n\nb"},
    ]
    assert (sent["max_completion_tokens"], sent["stop"]) == (8, ["END"])
    assert (sent["temperature"], sent["top_p"]) == (0.5, 0.9)


async def test_a_remote_tool_call_and_its_result() -> None:
    call = Reply(text="", tool_calls=[("call_1", "get_weather", '{"city": "Paris"}')])
    async with _remote(call, call, Reply(text="Sunny.")) as (root, upstream), _sdk(root) as c:
        ask: dict[str, Any] = {
            "model": "fake-model",
            "max_tokens": 8,
            "messages": WEATHER,
            "tools": [GET_WEATHER],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
        whole = await c.messages.create(**ask)
        async with c.messages.stream(**ask) as stream:
            final = await stream.get_final_message()
        result = {"type": "tool_result", "tool_use_id": "call_1", "content": "it broke", "is_error": True}
        answer = await c.messages.create(
            model="fake-model",
            max_tokens=8,
            messages=[*WEATHER, final.to_param(), {"role": "user", "content": [result]}],
        )
    for reply in (whole, final):
        assert reply.stop_reason == "tool_use"
        assert [(b.type, b.id, b.name, b.input) for b in reply.content if b.type == "tool_use"] == [
            ("tool_use", "call_1", "get_weather", {"city": "Paris"})
        ]
    assert _text(answer) == "Sunny."
    sent = upstream.requests[0]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    assert sent["tools"][0]["function"]["parameters"] == GET_WEATHER["input_schema"]
    history = upstream.requests[2]["messages"]
    assert history[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert history[2]["role"] == "tool"
    assert history[2]["tool_call_id"] == "call_1"
    assert "it broke" in history[2]["content"]
    assert "error" in history[2]["content"].lower()  # is_error is said in the text


async def test_a_remote_stream_that_fails_midway_ends_with_an_error_event() -> None:
    failing = Reply(text="one two three four", error_midway="the upstream is overloaded")
    body = {"model": "fake-model", "max_tokens": 8, "messages": HELLO, "stream": True}
    async with _remote(failing) as (root, _), _sdk(root) as c:
        async with httpx.AsyncClient() as http, http.stream("POST", root + "/v1/messages", json=body) as r:
            assert r.status_code == 200  # it started well
            lines = [line async for line in r.aiter_lines() if line]
        text: list[str] = []

        async def read() -> None:
            async with c.messages.stream(model="fake-model", max_tokens=8, messages=HELLO) as stream:
                async for piece in stream.text_stream:
                    text.append(piece)

        with pytest.raises(anthropic.APIStatusError, match="overloaded") as raised:
            await read()
    assert lines[-2] == "event: error"
    error = json.loads(lines[-1].removeprefix("data: "))
    assert error["type"] == "error"
    assert error["error"]["type"] == "overloaded_error"
    assert raised.value.type == "overloaded_error"
    assert "".join(text) == "one "  # a token came before the failure


async def test_callers_authenticate_with_x_api_key_or_a_bearer_key() -> None:
    body = {"model": "fake-model", "max_tokens": 8, "messages": HELLO}
    async with _remote(keyed=True) as (root, _):
        async with httpx.AsyncClient() as http:
            for headers, status in [
                ({"x-api-key": KEY_A, "anthropic-version": "2023-06-01", "anthropic-beta": "x"}, 200),
                ({"authorization": f"Bearer {KEY_A}"}, 200),
                ({"x-api-key": "sk-wrong"}, 401),
                ({}, 401),
            ]:
                for path in ("/v1/messages", "/v1/messages/count_tokens"):
                    sent = body if path == "/v1/messages" else {"model": "fake-model", "messages": HELLO}
                    response = await http.post(root + path, json=sent, headers=headers)
                    if path.endswith("count_tokens") and status == 200:
                        status = 400  # authenticated, but this provider cannot count tokens
                    assert response.status_code == status, (headers, path, response.text)
                    if status == 401:
                        assert response.json()["error"]["type"] == "authentication_error"
                        assert "sk-" not in response.text  # no hint of any key
        async with _sdk(root, KEY_A) as good:
            assert _text(await good.messages.create(**body)) == "Hello there"
        async with _sdk(root, "sk-wrong") as bad:
            with pytest.raises(anthropic.AuthenticationError) as raised:
                await bad.messages.create(**body)
    assert raised.value.type == "authentication_error"


async def test_an_upstream_rate_limit_is_a_429_with_its_retry_after() -> None:
    limited = Reply(status=429, error="quota", headers={"retry-after": "120"})
    async with _remote(limited) as (root, _), _sdk(root) as c:
        with pytest.raises(anthropic.RateLimitError) as raised:
            await c.messages.create(model="fake-model", max_tokens=8, messages=HELLO)
    assert raised.value.type == "rate_limit_error"
    assert raised.value.response.headers["retry-after"] == "120"
