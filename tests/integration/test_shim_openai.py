"""The OpenAI API on the shim, driven by the official openai client, on the bundled model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from typing import Any

import httpx
import openai
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.service.settings import Settings

from .conftest import Service, eventually

HELLO = [{"role": "user", "content": "Name three colours."}]


async def test_chat_streamed_and_whole_agree_at_temperature_zero(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(model="", messages=HELLO, temperature=0, max_tokens=16)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(
        model="",
        messages=HELLO,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == text
    assert whole.choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 16  # type: ignore[union-attr]


async def test_cached_prompt_tokens_read_as_openais_sdk_reads_them(client: openai.AsyncOpenAI) -> None:
    """Whole and streamed, with a cache_salt as the SDK sends one (extra_body, as for vLLM).
    The same prompt four times: the first is computed, the repeats come from the prompt cache."""
    salt = {"cache_salt": f"team-a-{uuid.uuid4().hex}"}  # nothing cached for it yet
    counts = []
    for _ in range(2):
        whole = await client.chat.completions.create(
            model="",
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=4,
            extra_body=salt,
        )
        stream = await client.chat.completions.create(  # type: ignore[call-overload]
            model="",
            messages=HELLO,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=salt,
        )
        last = [c async for c in stream][-1]
        for usage in (whole.usage, last.usage):
            assert usage is not None
            assert usage.prompt_tokens_details is not None
            counts.append((usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens))
    prompt = counts[0][1]
    assert counts == [(0, prompt)] + [(prompt, prompt)] * 3


async def test_the_sync_client_works_too(base_url: str) -> None:
    def call() -> str:
        with openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0) as client:
            reply = client.chat.completions.create(model="", messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
            return reply.choices[0].message.content or ""

    assert await asyncio.to_thread(call)  # a sync client in a thread: the service runs on this loop


async def test_models_list_and_one(client: openai.AsyncOpenAI, service: Service) -> None:
    models = [m async for m in client.models.list()]
    default = service.engine.default_model
    assert default in [m.id for m in models]
    assert (await client.models.retrieve(default)).owned_by == "llamacpp"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_an_unknown_model_fails_before_any_stream_byte(
    client: openai.AsyncOpenAI, settings: Settings, service: Service
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="no-such-model", messages=HELLO, stream=True)  # type: ignore[arg-type]
    assert "no-such-model" in str(raised.value)
    # Nothing of the server's own: not its directories, not the other models it has.
    assert str(settings.llamacpp.cache_dir) not in str(raised.value)
    assert service.engine.default_model not in raised.value.message
    assert (raised.value.code, raised.value.param) == ("model_not_found", "model")  # from the trailers


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 17}, "n"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"store": True}, "store"),
        ({"made_up": 1}, "made_up"),
        ({"temperature": 5}, "temperature"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        # Beyond the wire's int32 and int64 fields (schemathesis found a 500 for the first).
        ({"max_completion_tokens": 2**31}, "max_completion_tokens"),
        ({"top_k": 2**31}, "top_k"),
        ({"seed": 2**63}, "seed"),
        ({"priority": 2**31}, "priority"),  # schemathesis found a 500 for this one too
        ({"cache_salt": "s" * 257}, "cache_salt"),  # refused by the service, named by the shim
    ],
)
async def test_what_is_not_honoured_is_a_400_naming_it(
    client: openai.AsyncOpenAI, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="", messages=HELLO, max_tokens=4, extra_body=extra)  # type: ignore[arg-type]
    assert raised.value.body["param"] == param  # type: ignore[index]


IMAGE = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([{"role": "user", "content": "hi", "foo": 1}], {}, "messages[0].foo"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "hi", "foo": 1}]}],
            {},
            "messages[0].content[0].foo",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": IMAGE, "detail": "high"}}],
                }
            ],
            {},
            "messages[0].content[0].image_url.detail",
        ),
        (HELLO, {"stream": True, "stream_options": {"include_usage": True, "foo": 1}}, "stream_options.foo"),
        (HELLO, {"response_format": {"type": "json_object", "foo": 1}}, "response_format.foo"),
        (
            [{"role": "tool", "tool_call_id": "call_nowhere", "content": "42"}],
            {},
            "messages[0].tool_call_id",
        ),
        ([{"role": "assistant", "content": "hi", "refusal": "no"}], {}, "messages[0].refusal"),
        ([{"role": "user"}, {"content": "hi"}], {}, "messages[1].role"),
    ],
)
async def test_unknown_or_unhonoured_nested_keys_are_a_400_naming_their_path(
    client: openai.AsyncOpenAI, messages: list[dict[str, Any]], extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="", messages=messages, max_tokens=4, extra_body=extra)  # type: ignore[arg-type]
    assert raised.value.param == param


async def test_user_names_and_a_reply_sent_back_as_history_are_accepted(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "Hi.", "name": "ada"}],
        max_tokens=4,
        user="end-user-7",
    )
    assert "refusal" in first.choices[0].message.model_fields_set  # OpenAI's shape: refusal: null
    assert first.choices[0].message.refusal is None
    history = [{"role": "user", "content": "Hi.", "name": "ada"}, first.choices[0].message, HELLO[0]]
    again = await client.chat.completions.create(model="", messages=history, max_tokens=4, user="end-user-7")  # type: ignore[arg-type]
    assert again.choices[0].message.content


async def test_logprobs_come_from_token_signals(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(
        model="",
        messages=HELLO,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    entries = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert entries
    assert len(entries) == 5
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the best one


async def test_a_json_schema_response_format_gives_matching_json(client: openai.AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    reply = await client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "Name one colour, as JSON."}],
        max_tokens=40,
        temperature=0,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert isinstance(data["colour"], str)


async def _leave(task: asyncio.Task[Any]) -> None:
    """The client gives up: httpx closes the connection of a cancelled request."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _spent_once_stopped(service: Service, before: int) -> int:
    """Tokens generated since `before`, once the engine holds no job any more."""
    await eventually(lambda: service.engine.held_sequences == 0, timeout_s=60)
    return service.tokens_generated - before


async def test_a_client_that_disconnects_stops_generation(base_url: str, service: Service) -> None:
    body: dict[str, Any] = {"messages": HELLO, "max_tokens": 400, "stream": True}
    before = service.tokens_generated
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_lines():
            break
    # The model never ends this reply by itself (it repeats), so stopping short of
    # max_tokens means the gone client's generation was stopped.
    assert await _spent_once_stopped(service, before) < body["max_tokens"]


@pytest.mark.parametrize("extra", [{}, {"logprobs": True}], ids=["whole", "logprobs"])
async def test_a_non_streaming_client_that_disconnects_stops_generation(
    base_url: str, service: Service, extra: dict[str, Any]
) -> None:
    body = {"messages": HELLO, "max_tokens": 1500, **extra}
    before = service.tokens_generated
    async with httpx.AsyncClient(timeout=60) as http:
        task = asyncio.create_task(http.post(f"{base_url}/chat/completions", json=body))
        await eventually(lambda: service.tokens_generated > before + 5)
        await _leave(task)
    assert await _spent_once_stopped(service, before) < body["max_tokens"]


@pytest.mark.parametrize(
    "extra", [{}, {"logprobs": True}, {"stream": True}], ids=["whole", "logprobs", "stream"]
)
async def test_a_queued_request_whose_client_leaves_leaves_the_queue(
    base_url: str, service: Service, stub: pb_grpc.LLMServiceStub, extra: dict[str, Any]
) -> None:
    scheduler = service.engine.scheduler
    assert scheduler is not None
    long = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Tell a story.")], max_tokens=2000)
    holders = [stub.StreamChat(long) for _ in range(scheduler.queue.slots)]
    try:
        await eventually(lambda: scheduler.queue.busy == scheduler.queue.slots)
        async with httpx.AsyncClient(timeout=60) as http:
            body = {"messages": HELLO, "max_tokens": 8, **extra}
            task = asyncio.create_task(http.post(f"{base_url}/chat/completions", json=body))
            await eventually(lambda: bool(scheduler.queue.waiting))
            await _leave(task)
            await eventually(lambda: not scheduler.queue.waiting)
    finally:
        for call in holders:
            call.cancel()
    await eventually(lambda: scheduler.queue.busy == 0)


async def test_the_openapi_document_is_served(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        doc = (await http.get(base_url.removesuffix("/v1") + "/openapi.json")).json()
    assert "/v1/chat/completions" in doc["paths"]
    assert "/v1/models" in doc["paths"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]  # its handler parses the body itself
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    request = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "priority", "user"} <= set(request["properties"])
    assert "ChatMessage" in doc["components"]["schemas"]
    assert [p["name"] for p in chat["parameters"]] == ["x-priority"]


async def test_routes_answer_without_the_v1_prefix_too(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(base_url.removesuffix("/v1") + "/models")
    assert response.status_code == 200
    assert response.json()["object"] == "list"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nowhere", 404), ("DELETE", "/v1/chat/completions", 405), ("GET", "/v1/models/%0A0", 404)],
)
async def test_router_errors_are_in_openais_shape(base_url: str, method: str, path: str, status: int) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.request(method, base_url.removesuffix("/v1") + path)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] in {"not_found_error", "invalid_request_error"}
    assert error["message"]


async def test_the_bundled_model_calls_a_tool_through_the_openai_client(client: openai.AsyncOpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = await client.chat.completions.create(
        model="",
        messages=ask,
        tools=tools,
        tool_choice="required",
        temperature=0,
        max_tokens=60,  # type: ignore[arg-type]
    )
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert whole.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["city"] == "Paris"  # type: ignore[union-attr]
    stream = await client.chat.completions.create(
        model="",
        messages=ask,
        tools=tools,
        tool_choice="required",
        temperature=0,
        max_tokens=60,
        stream=True,  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert pieces[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "".join(p.function.arguments or "" for p in pieces) == call.function.arguments  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_tool_result_goes_back_and_the_model_answers(client: openai.AsyncOpenAI) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = await client.chat.completions.create(
        model="",
        messages=messages,
        tools=tools,
        tool_choice="none",
        temperature=0,
        max_tokens=20,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.tool_calls is None
    answer = reply.choices[0].message.content or ""
    assert re.search(r"sunny|21", answer, re.I), answer  # it answers from the tool's result


async def test_the_sync_client_streams_too(base_url: str, client: openai.AsyncOpenAI) -> None:
    def call() -> tuple[str, list[str | None]]:
        with openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0) as sync:
            stream = sync.chat.completions.create(
                model="", messages=HELLO, temperature=0, max_tokens=8, stream=True
            )  # type: ignore[call-overload]
            chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices]

    text, finishes = await asyncio.to_thread(call)
    whole = await client.chat.completions.create(model="", messages=HELLO, temperature=0, max_tokens=8)  # type: ignore[arg-type]
    assert text == whole.choices[0].message.content
    assert finishes[-1] == "length"


async def test_streamed_logprobs_match_the_whole_reply(client: openai.AsyncOpenAI) -> None:
    ask = {
        "model": "",
        "messages": HELLO,
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = await client.chat.completions.create(**ask)  # type: ignore[call-overload]
    stream = await client.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
    streamed = [
        entry
        async for c in stream
        if c.choices and c.choices[0].logprobs
        for entry in c.choices[0].logprobs.content or ()
    ]
    assert [(e.token, len(e.top_logprobs)) for e in streamed] == [
        (e.token, 2)
        for e in whole.choices[0].logprobs.content  # type: ignore[union-attr]
    ]
    assert [e.logprob for e in streamed] == pytest.approx(
        [e.logprob for e in whole.choices[0].logprobs.content]  # type: ignore[union-attr]
    )


async def test_a_json_object_response_format_constrains_the_reply_to_json(client: openai.AsyncOpenAI) -> None:
    ask = [{"role": "user", "content": 'Answer in JSON: {"colour": ...}. What colour is the sky?'}]

    async def reply(**extra: Any) -> tuple[str, str]:
        got = await client.chat.completions.create(
            model="", messages=ask, max_tokens=30, temperature=0, **extra
        )  # type: ignore[call-overload]
        return got.choices[0].message.content or "", got.choices[0].finish_reason

    free, _ = await reply()
    constrained, finish = await reply(response_format={"type": "json_object"})
    assert not free.lstrip().startswith("{")  # the base model does not answer in JSON by itself
    assert constrained.lstrip().startswith("{")
    # This small model may run on inside a string until max_tokens; a reply that ended is whole JSON.
    if finish == "stop":
        assert isinstance(json.loads(constrained), dict)


async def test_text_and_image_parts_on_the_text_only_model_are_a_clear_400(
    client: openai.AsyncOpenAI,
) -> None:
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="",
            messages=[{"role": "user", "content": parts}],
            max_tokens=4,  # type: ignore[arg-type]
        )
    assert "image" in raised.value.message.lower()
    text_only = [{"type": "text", "text": "Name three "}, {"type": "text", "text": "colours."}]
    reply = await client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": text_only}],
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    plain = await client.chat.completions.create(model="", messages=HELLO, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == plain.choices[0].message.content  # the parts are joined


async def test_max_completion_tokens_wins_over_max_tokens(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="",
        messages=HELLO,
        max_tokens=10,
        max_completion_tokens=3,  # type: ignore[arg-type]
    )
    assert reply.usage is not None
    assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (3, "length")


async def test_a_stop_sequence_ends_the_reply_before_it(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="",
        messages=HELLO,
        max_tokens=60,
        temperature=0,
        stop=["\n"],  # type: ignore[arg-type]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert "\n" not in (reply.choices[0].message.content or "")


async def test_the_same_seed_gives_the_same_sampled_reply(client: openai.AsyncOpenAI) -> None:
    async def sample(seed: int) -> str:
        reply = await client.chat.completions.create(
            model="",
            messages=HELLO,
            max_tokens=12,
            temperature=1.5,
            seed=seed,  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content or ""

    assert await sample(7) == await sample(7)


@pytest.mark.parametrize(
    ("extra", "headers", "priority"),
    [({"priority": 7}, {}, 7), ({}, {"x-priority": "9"}, 9), ({"priority": 3}, {"x-priority": "9"}, 3)],
    ids=["body", "header", "body-wins"],
)
async def test_priority_comes_from_the_body_or_the_x_priority_header(
    base_url: str,
    service: Service,
    stub: pb_grpc.LLMServiceStub,
    extra: dict[str, Any],
    headers: dict[str, str],
    priority: int,
) -> None:
    scheduler = service.engine.scheduler
    assert scheduler is not None
    long = pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content="Tell a story.")], max_tokens=2000)
    holders = [stub.StreamChat(long) for _ in range(scheduler.queue.slots)]
    try:
        await eventually(lambda: scheduler.queue.busy == scheduler.queue.slots)
        async with httpx.AsyncClient(timeout=60) as http:
            body = {"messages": HELLO, "max_tokens": 4, **extra}
            task = asyncio.create_task(http.post(f"{base_url}/chat/completions", json=body, headers=headers))
            await eventually(lambda: bool(scheduler.queue.waiting))
            assert [w.priority for w in scheduler.queue.waiting] == [priority]
            await _leave(task)
    finally:
        for call in holders:
            call.cancel()
    await eventually(lambda: scheduler.queue.busy == 0)


@pytest.mark.parametrize("header", ["urgent", str(2**31)])
async def test_a_bad_x_priority_header_is_a_400_naming_it(client: openai.AsyncOpenAI, header: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="",
            messages=HELLO,
            max_tokens=4,
            extra_headers={"x-priority": header},  # type: ignore[arg-type]
        )
    assert raised.value.param == "x-priority"
