"""What popular clients send by default is honoured, not refused: parallel_tool_calls, strict
tools, penalties, store=false, the legacy functions API and n > 1; through the openai SDK
and LangChain's ChatOpenAI, unchanged, on the bundled model and on a remote provider."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator

import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from ..fakes.openai_server import Reply
from ..fakes.upstream import Upstream
from .conftest import shim_in_front_of_fake_openai

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_parallel_tool_calls_false_and_strict_tools(client: openai.AsyncOpenAI) -> None:
    strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}  # type: ignore[dict-item]
    reply = await client.chat.completions.create(
        model="",
        messages=ASK,  # type: ignore[arg-type]
        tools=[strict],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


async def test_penalties_are_applied(client: openai.AsyncOpenAI) -> None:
    ask = [{"role": "user", "content": "Write the word apple twenty times."}]
    plain = await client.chat.completions.create(model="", messages=ask, temperature=0, max_tokens=48)  # type: ignore[arg-type]
    penalised = await client.chat.completions.create(
        model="",
        messages=ask,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=48,
        frequency_penalty=2.0,
        presence_penalty=1.0,
    )
    plain_text, penalised_text = (
        plain.choices[0].message.content or "",
        penalised.choices[0].message.content or "",
    )
    assert plain_text.lower().count("apple") > penalised_text.lower().count("apple"), (
        plain_text,
        penalised_text,
    )
    repeated = await client.chat.completions.create(
        model="",
        messages=ask,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=48,
        extra_body={"repetition_penalty": 1.5},
    )
    assert repeated.choices[0].message.content != plain_text  # once a 500: the sampler's arity


async def test_store_false_is_accepted(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="", messages=ASK, max_tokens=4, store=False)  # type: ignore[arg-type]
    assert reply.choices[0].message.content


async def test_the_legacy_functions_api_round_trip(client: openai.AsyncOpenAI) -> None:
    functions = [WEATHER["function"]]
    called = await client.chat.completions.create(  # type: ignore[call-overload]
        model="",
        messages=ASK,
        functions=functions,
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=60,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments)["city"] == "Paris"
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        model="",
        messages=ASK,
        functions=functions,
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    chunks = [c async for c in stream]
    pieces = [
        c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call
    ]
    assert pieces[0].name == "get_weather"
    assert "".join(p.arguments or "" for p in pieces) == choice.message.function_call.arguments
    assert chunks[-1].choices[0].finish_reason == "function_call"
    answered = await client.chat.completions.create(  # type: ignore[call-overload]
        model="",
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "function_call": choice.message.function_call.model_dump(),
            },
            {"role": "function", "name": "get_weather", "content": "Sunny, 21 degrees"},
        ],
        functions=functions,
        function_call="none",
        temperature=0,
        max_tokens=30,
    )
    answer = answered.choices[0].message.content or ""
    assert re.search(r"sunny|21", answer, re.I), answer


async def test_n_choices_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    ask = [{"role": "user", "content": "Name a colour."}]
    whole = await client.chat.completions.create(
        model="",
        messages=ask,
        n=3,
        temperature=1.0,
        seed=7,
        max_tokens=12,  # type: ignore[arg-type]
    )
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts = [c.message.content for c in whole.choices]
    assert all(texts)
    assert len(set(texts)) > 1  # different seeds: different samples
    again = await client.chat.completions.create(
        model="",
        messages=ask,
        n=3,
        temperature=1.0,
        seed=7,
        max_tokens=12,  # type: ignore[arg-type]
    )
    assert [c.message.content for c in again.choices] == texts  # the same seeds, the same choices
    # The prompt counted once, the completions summed over the choices.
    one = await client.chat.completions.create(
        model="",
        messages=ask,  # type: ignore[arg-type]
        temperature=1.0,
        seed=7,
        max_tokens=12,
    )
    assert whole.usage is not None
    assert one.usage is not None
    assert one.choices[0].message.content == texts[0]  # choice 0 samples with the seed itself
    assert whole.usage.prompt_tokens == one.usage.prompt_tokens
    assert whole.usage.completion_tokens > one.usage.completion_tokens
    stream = await client.chat.completions.create(
        model="",
        messages=ask,  # type: ignore[arg-type]
        n=3,
        temperature=1.0,
        seed=7,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    streamed = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in range(3)
    }
    assert [streamed[i] for i in range(3)] == texts
    finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finishes) == [0, 1, 2]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


class Place(BaseModel):
    """A city and the country it is in."""

    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
async def test_langchain_structured_output_every_method(base_url: str, method: str) -> None:
    llm = ChatOpenAI(
        model="", base_url=base_url, api_key="unused", temperature=0, max_tokens=60, max_retries=0
    )
    ask = "Paris is the capital of which country? Answer with the city and the country."
    if method == "json_mode":
        ask += ' Reply in JSON as {"city": ..., "country": ...}.'
    structured = llm.with_structured_output(Place, method=method)  # type: ignore[arg-type]
    place = await structured.ainvoke(ask)
    assert isinstance(place, Place | dict)
    found = place if isinstance(place, Place) else Place.model_validate(place)
    assert "Paris" in found.city


async def test_langchain_bind_tools_strict(base_url: str) -> None:
    llm = ChatOpenAI(
        model="", base_url=base_url, api_key="unused", temperature=0, max_tokens=60, max_retries=0
    )

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "Sunny"

    bound = llm.bind_tools([get_weather], strict=True, tool_choice="get_weather")
    message = await bound.ainvoke("What is the weather in Paris?")
    assert message.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]
    assert message.tool_calls[0]["args"] == {"city": "Paris"}  # type: ignore[attr-defined]


async def test_langchain_on_the_responses_api(base_url: str) -> None:
    llm = ChatOpenAI(
        model="",
        base_url=base_url,
        api_key="unused",
        temperature=0,
        max_tokens=40,
        max_retries=0,
        use_responses_api=True,
    )
    message = await llm.ainvoke("What is 2+2?")
    assert "4" in message.text or "four" in message.text.lower()
    chunks = [c async for c in llm.astream("What is 2+2?")]
    assert "".join(c.text for c in chunks) == message.text


# The same fields on a remote provider (a fake OpenAI upstream): passed on, not dropped.


@contextlib.asynccontextmanager
async def _remote(*script: Reply) -> AsyncIterator[tuple[str, Upstream]]:
    """(the shim's /v1 URL, the upstream) of a service in front of a fake OpenAI."""
    async with shim_in_front_of_fake_openai(*script) as (root, upstream):
        yield root + "/v1", upstream


LEGACY_CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
CALL = Reply(text="", tool_calls=[("call_1", "get_weather", '{"city": "Paris"}')])


async def test_a_remote_provider_is_sent_what_the_client_sent() -> None:
    strict = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}  # type: ignore[dict-item]
    async with (
        _remote(CALL, Reply(text="Sunny.")) as (base_url, upstream),
        openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0) as client,
    ):
        called = await client.chat.completions.create(
            model="fake-model",
            messages=ASK,  # type: ignore[arg-type]
            tools=[strict],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            store=False,
            user="end-user-7",
        )
        answered = await client.chat.completions.create(  # type: ignore[call-overload]
            model="fake-model",
            messages=[
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "get_weather", "arguments": "{}"},
                },
                {"role": "function", "name": "get_weather", "content": "Sunny, 21 degrees"},
            ],
            functions=[WEATHER["function"]],
            function_call="auto",
        )
    calls = called.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [("call_1", "get_weather")]  # type: ignore[union-attr]
    assert answered.choices[0].message.content == "Sunny."
    sent = upstream.requests[0]
    assert sent["tools"][0]["function"]["strict"] is True
    assert sent["parallel_tool_calls"] is False
    assert (sent["frequency_penalty"], sent["presence_penalty"]) == (0.5, -0.5)
    assert "store" not in sent  # nothing asks the upstream to keep it
    assert sent["user"] == "end-user-7"
    legacy = upstream.requests[1]  # the legacy functions API became tools and a tool turn
    assert legacy["tools"][0]["function"]["name"] == "get_weather"
    assert legacy["tool_choice"] == "auto"
    history = legacy["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[2]["tool_call_id"] == history[1]["tool_calls"][0]["id"]
    assert history[2]["content"] == "Sunny, 21 degrees"


async def test_n_choices_on_a_remote_provider() -> None:
    async with (
        _remote(Reply(text="red"), Reply(text="blue")) as (base_url, upstream),
        openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0) as client,
    ):
        whole = await client.chat.completions.create(
            model="fake-model",
            messages=ASK,  # type: ignore[arg-type]
            n=2,
            seed=7,
        )
    assert sorted(c.message.content or "" for c in whole.choices) == ["blue", "red"]
    assert [c.index for c in whole.choices] == [0, 1]
    assert sorted(r["seed"] for r in upstream.requests) == [7, 8]  # one request a choice, seeds apart
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == 5  # the prompt counted once
    assert whole.usage.completion_tokens == 2


async def test_langchain_on_a_remote_provider() -> None:
    place = Reply(text="", tool_calls=[("call_1", "Place", '{"city": "Paris", "country": "France"}')])
    async with _remote(place, CALL, Reply(text="Four.")) as (base_url, upstream):
        llm = ChatOpenAI(model="fake-model", base_url=base_url, api_key="unused", max_retries=0)
        found = await llm.with_structured_output(Place, method="function_calling").ainvoke("Paris?")

        def get_weather(city: str) -> str:
            """The weather in a city."""
            return "Sunny"

        bound_llm = llm.bind_tools([get_weather], strict=True, tool_choice="get_weather")
        message = await bound_llm.ainvoke("Weather?")
        on_responses = ChatOpenAI(
            model="fake-model", base_url=base_url, api_key="unused", max_retries=0, use_responses_api=True
        )
        answer = await on_responses.ainvoke("What is 2+2?")
    assert found == Place(city="Paris", country="France")
    assert message.tool_calls[0]["args"] == {"city": "Paris"}  # type: ignore[attr-defined]
    assert answer.text == "Four."
    structured, bound, responses = upstream.requests
    assert responses["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert structured["parallel_tool_calls"] is False
    assert bound["tools"][0]["function"]["strict"] is True
    assert bound["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
