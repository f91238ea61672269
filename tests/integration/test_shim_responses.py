"""The OpenAI Responses API on the shim, through the official openai client, unchanged."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from ..fakes.openai_server import Reply
from ..fakes.upstream import Upstream
from .conftest import Service, shim_in_front_of_fake_openai

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_a_text_input_gets_an_answer_with_usage(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="", input="What is 2+2?", temperature=0, max_output_tokens=40
    )
    assert response.status == "completed"
    assert re.search(r"\b4\b|\bfour\b", response.output_text, re.I), response.output_text
    assert response.output[0].type == "message"
    assert response.usage is not None
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.input_tokens_details.cached_tokens <= response.usage.input_tokens


async def test_instructions_are_obeyed(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="",
        instructions="Your name is Zorblax.",
        input=[{"role": "user", "content": "What is your name?"}],
        temperature=0,
        max_output_tokens=30,
    )
    assert "Zorblax" in response.output_text


async def test_max_output_tokens_makes_it_incomplete(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="", input="Tell me a long story.", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 3


async def test_a_stream_has_the_documented_events_in_order(client: openai.AsyncOpenAI) -> None:
    whole = await client.responses.create(model="", input="What is 2+2?", temperature=0, max_output_tokens=24)
    stream = await client.responses.create(
        model="", input="What is 2+2?", temperature=0, max_output_tokens=24, stream=True
    )
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{whole.status}",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == whole.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert final.usage.output_tokens == whole.usage.output_tokens  # type: ignore[union-attr]


async def test_the_sdk_stream_helper_gives_the_final_response(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(
        model="", input="What is 2+2?", temperature=0, max_output_tokens=40
    ) as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert final.output_text == text
    assert text


async def test_a_function_call_round_trip(client: openai.AsyncOpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = await client.responses.create(
        model="", input=ask, tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=60
    )
    call = called.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] == "Paris"
    answered = await client.responses.create(
        model="",
        input=[
            *ask,
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=30,
        store=False,
    )
    assert re.search(r"sunny|21", answered.output_text, re.I), answered.output_text


async def test_a_streamed_function_call(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="",
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=60,
        stream=True,
    )
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-3]
    assert json.loads(done.arguments)["city"] == "Paris"  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == done.arguments  # type: ignore[union-attr]


async def test_json_schema_text_format(client: openai.AsyncOpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    response = await client.responses.create(
        model="",
        input="Paris is the capital of which country? Answer with the city and the country.",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        temperature=0,
        max_output_tokens=60,
    )
    assert response.status == "completed"
    place = json.loads(response.output_text)
    assert set(place) == {"city", "country"}
    assert "France" in place["country"]
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]


async def test_a_stored_response_is_continued_read_and_deleted(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(
        model="", input="The secret word is banana.", temperature=0, max_output_tokens=20
    )
    assert first.store
    ask = "What is the secret word?"
    second = await client.responses.create(
        model="", previous_response_id=first.id, input=ask, temperature=0, max_output_tokens=20
    )
    assert "banana" in second.output_text.lower()
    assert second.previous_response_id == first.id
    # Without the first turn the question is all the prompt holds, and the answer cannot know.
    alone = await client.responses.create(
        model="", input=ask, temperature=0, max_output_tokens=20, store=False
    )
    assert "banana" not in alone.output_text.lower()
    assert second.usage.input_tokens > alone.usage.input_tokens  # type: ignore[union-attr]

    got = await client.responses.retrieve(first.id)
    assert (got.id, got.output_text) == (first.id, first.output_text)
    items = await client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"]
    deleted = await client.responses.delete(first.id)  # type: ignore[func-returns-value]
    assert deleted is None  # the SDK returns nothing for a 200 delete
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as raised:
        await client.responses.create(
            model="", previous_response_id=first.id, input="Hi", max_output_tokens=4
        )
    assert raised.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_store_false_keeps_nothing(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="", input="Hi", max_output_tokens=4, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_stored_responses_are_per_principal(base_url: str, client: openai.AsyncOpenAI) -> None:
    """In open mode everyone is one principal; the store's own isolation is unit-tested. Here:
    an id that is not stored and a malformed id are told apart."""
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_nowhere")
    async with httpx.AsyncClient() as http:
        bad = await http.get(f"{base_url}/responses/{'x' * 200}")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "id"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"made_up": 1}, "made_up"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"truncation": "auto"}, "truncation"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": "hi", "foo": 1}]}, "input[0].foo"),
        ({"temperature": 5}, "temperature"),
    ],
)
async def test_what_is_not_honoured_is_a_400_naming_it(
    client: openai.AsyncOpenAI, extra: dict[str, object], param: str
) -> None:
    body = {"input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        await client.responses.create(model="", max_output_tokens=4, extra_body=body)  # type: ignore[call-overload]
    assert raised.value.body["param"] == param  # type: ignore[index]


async def test_an_unknown_model_is_a_404_before_any_stream(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="Hi", stream=True)


# A remote provider behind the service: a fake OpenAI upstream (its Chat Completions), scripted
# per test.


@contextlib.asynccontextmanager
async def _remote(*script: Reply) -> AsyncIterator[tuple[openai.AsyncOpenAI, Upstream]]:
    async with (
        shim_in_front_of_fake_openai(*script) as (root, upstream),
        openai.AsyncOpenAI(api_key="unused", base_url=root + "/v1", max_retries=0) as client,
    ):
        yield client, upstream


async def test_a_remote_model_answers_whole_and_streamed() -> None:
    async with _remote(Reply(text="one two three", cached_tokens=2)) as (client, upstream):
        ask: dict[str, Any] = {
            "model": "fake-model",
            "instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Count."}]}],
            "max_output_tokens": 8,
            "temperature": 0.5,
            "top_p": 0.9,
        }
        whole = await client.responses.create(**ask)
        async with client.responses.stream(**ask) as stream:
            text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
            final = await stream.get_final_response()
    assert whole.output_text == text == final.output_text == "one two three"
    for response in (whole, final):
        assert response.model == "fake-model"
        assert response.status == "completed"
        usage = response.usage
        assert usage is not None  # of the fake's 5 prompt tokens, 2 came from its cache
        assert (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens) == (
            5,
            2,
            3,
        )
    sent = upstream.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Count."},
    ]
    assert (sent["max_completion_tokens"], sent["temperature"], sent["top_p"]) == (8, 0.5, 0.9)


async def test_a_remote_function_call_and_its_output() -> None:
    call = Reply(text="", tool_calls=[("call_1", "get_weather", '{"city": "Paris"}')])
    async with _remote(call, Reply(text="Sunny.")) as (client, upstream):
        ask = [{"role": "user", "content": "What is the weather in Paris?"}]
        called = await client.responses.create(
            model="fake-model", input=ask, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False
        )
        item = called.output[0]
        assert (item.type, item.call_id, item.name, item.arguments) == (  # type: ignore[union-attr]
            "function_call",
            "call_1",
            "get_weather",
            '{"city": "Paris"}',
        )
        answered = await client.responses.create(
            model="fake-model",
            previous_response_id=called.id,
            input=[{"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 degrees"}],
            tools=[WEATHER],
        )
    assert answered.output_text == "Sunny."
    first = upstream.requests[0]
    assert (first["tool_choice"], first["parallel_tool_calls"]) == ("required", False)
    assert first["tools"][0]["function"]["parameters"] == WEATHER["parameters"]
    history = upstream.requests[1]["messages"]  # the stored turn, then the call's output
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert (history[2]["tool_call_id"], history[2]["content"]) == ("call_1", "Sunny, 21 degrees")


async def test_a_remote_stream_that_fails_midway_ends_with_response_failed() -> None:
    failing = Reply(text="one two three four", error_midway="the upstream is overloaded")
    async with _remote(failing) as (client, _):
        stream = await client.responses.create(model="fake-model", input="Hi", stream=True)
        events = [e async for e in stream]
        with pytest.raises(openai.NotFoundError):  # a failed response is not kept
            await client.responses.retrieve(events[0].response.id)  # type: ignore[union-attr]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "one "  # a token came before the failure
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed"
    assert failed.error is not None
    assert "overloaded" in failed.error.message


async def test_a_remote_rate_limit_is_a_429_with_its_retry_after() -> None:
    limited = Reply(status=429, error="quota", headers={"retry-after": "120"})
    async with _remote(limited) as (client, _):
        with pytest.raises(openai.RateLimitError) as raised:
            await client.responses.create(model="fake-model", input="Hi")
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="fake-model", input="Hi", stream=True)
    assert raised.value.response.headers["retry-after"] == "120"


# What litellm's own modules warn about as it loads them, lazily, during the call, is not ours.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
async def test_litellm_responses_on_the_bundled_model_and_a_remote_one(
    base_url: str, service: Service, loopback_only: list[str], litellm: Any
) -> None:
    local = await litellm.aresponses(
        model=f"openai/{service.engine.default_model}",
        input="What is 2+2?",
        api_base=base_url,
        api_key="unused",
        temperature=0,
        max_output_tokens=40,
    )
    assert re.search(r"\b4\b|\bfour\b", _text_of(local), re.I), _text_of(local)
    async with _remote(Reply(text="one two three")) as (client, _):
        remote = await litellm.aresponses(
            model="openai/fake-model", input="Hi", api_base=str(client.base_url), api_key="unused"
        )
        streamed = await litellm.aresponses(
            model="openai/fake-model",
            input="Hi",
            api_base=str(client.base_url),
            api_key="unused",
            stream=True,
        )
        events = [e async for e in streamed]
    assert _text_of(remote) == "one two three"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two three"
    assert events[-1].type == "response.completed"
    assert loopback_only == []


def _text_of(response: Any) -> str:
    return "".join(part.text for item in response.output if item.type == "message" for part in item.content)
