"""The OpenAI Responses API on the shim, through the official openai client, unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from llmservice.rest.server import running_shim

from .conftest import Service

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
async def base_url(service: Service) -> AsyncIterator[str]:
    async with running_shim(service.target, "127.0.0.1", 0, connect=service.in_process) as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0) as client:
        yield client


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
