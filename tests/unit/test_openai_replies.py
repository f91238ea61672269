"""The OpenAI shim's replies on the wire: OpenAI's nulls where OpenAI sends nulls, no key
where it sends none, and what the official client reads.

The shim runs whole (create_app) over the in-process channel to a scripted LLMService,
so each test knows exactly what the service said and checks what the shim made of it.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import httpx
import openai
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.grpc_api.in_process import HandlerRegistry, InProcessChannel
from llmservice.rest.app import create_app

MODEL = "tiny"
TOKENS = ["Hel", 'lo "wörld"', " ☃\u2028\x85\n"]  # quotes, non-ASCII, and what str.splitlines splits on
USAGE: dict[str, Any] = {"prompt_tokens": 11, "completion_tokens": 3, "cached_prompt_tokens": 4}
WEATHER = [  # one call in three pieces, then a second call in one
    pb.ToolCallDelta(index=0, id="call_a", name="get_weather", arguments_json=""),
    pb.ToolCallDelta(index=0, arguments_json='{"city": '),
    pb.ToolCallDelta(index=0, arguments_json='"Paris"}'),
    pb.ToolCallDelta(index=1, id="call_b", name="now", arguments_json="{}"),
]
COMPLETION_KEYS = ("id", "object", "created", "model", "choices", "usage", "system_fingerprint")


def _signal(token: str) -> pb.TokenSignalProto:
    top = [(token, 0.5), ("lo", 0.25), ("l", 0.125)]
    return pb.TokenSignalProto(confidence=0.5, top_k=[pb.TokenCandidateProto(text=t, prob=p) for t, p in top])


class ScriptedLLM(pb_grpc.LLMServiceServicer):
    """Answers "tools" with two tool calls and anything else with TOKENS."""

    async def Chat(self, request: pb.LLMChatRequest, context: Any) -> pb.LLMChatResponse:
        if request.messages[0].content == "tools":
            calls = [pb.ToolCall(id="call_1", name="f", arguments_json='{"x": 1}')]
            finish = pb.FINISH_REASON_TOOL_CALLS
            return pb.LLMChatResponse(model=MODEL, finish_reason=finish, tool_calls=calls)
        text = "".join(TOKENS)
        return pb.LLMChatResponse(content=text, model=MODEL, finish_reason=pb.FINISH_REASON_STOP, **USAGE)

    async def StreamChat(self, request: pb.LLMChatRequest, context: Any) -> AsyncIterator[pb.LLMChatChunk]:
        if request.messages[0].content == "tools":
            for delta in WEATHER:
                yield pb.LLMChatChunk(model=MODEL, tool_call=delta)
            yield pb.LLMChatChunk(done=True, model=MODEL, finish_reason=pb.FINISH_REASON_TOOL_CALLS)
            return
        for token in TOKENS:
            yield pb.LLMChatChunk(token=token, model=MODEL, signal=_signal(token))
        yield pb.LLMChatChunk(done=True, model=MODEL, finish_reason=pb.FINISH_REASON_LENGTH, **USAGE)

    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        served = [("a", "local"), ("b/c", "openai"), ("a", "other")]  # "a" twice: two providers serve it
        return pb.ListModelsResponse(models=[pb.ModelInfo(id=i, provider=p) for i, p in served])

    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        vectors = [pb.Embedding(values=[0.5, -2.0, 0.25]) for _ in request.input]
        return pb.EmbedResponse(model="emb", embeddings=vectors, prompt_tokens=2, total_tokens=2)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    registry = HandlerRegistry()
    pb_grpc.add_LLMServiceServicer_to_server(ScriptedLLM(), cast(grpc.aio.Server, registry))
    app = create_app("unused", connect=lambda: InProcessChannel(registry, []))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shim/v1") as client,
    ):
        yield client


@pytest.fixture
def client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://shim/v1", api_key="k", http_client=http)


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


async def _events(http: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    """The stream's events, read line by line as httpx reads them."""
    async with http.stream("POST", "/chat/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines  # no event cut in two
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def test_a_whole_reply_has_openais_nulls_and_no_tool_calls_key(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    body = (await http.post("/chat/completions", json=_chat("hi"))).json()
    assert set(body) == set(COMPLETION_KEYS)
    assert (body["object"], body["model"], body["system_fingerprint"]) == ("chat.completion", MODEL, None)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(TOKENS), "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "".join(TOKENS)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 4


async def test_a_reply_that_calls_tools_has_null_content(http: httpx.AsyncClient) -> None:
    message = (await http.post("/chat/completions", json=_chat("tools"))).json()["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
        ],
    }


async def test_a_whole_reply_with_logprobs_has_each_tokens_top_few(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2
    )
    logprobs = reply.http_response.json()["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    assert [e["token"] for e in logprobs["content"]] == TOKENS
    first = logprobs["content"][0]
    assert first["logprob"] == pytest.approx(-0.6931, abs=1e-4)  # ln 0.5
    assert first["bytes"] == list(b"Hel")
    assert [t["token"] for t in first["top_logprobs"]] == ["Hel", "lo"]  # 2 of the 3 the service gave
    assert reply.parse().choices[0].message.content == "".join(TOKENS)


async def test_streamed_chunks_carry_only_what_changed(http: httpx.AsyncClient) -> None:
    events = await _events(http, _chat("hi", stream=True, stream_options={"include_usage": True}))
    assert len({(e["id"], e["created"]) for e in events}) == 1  # one completion
    for event in events:
        assert event["object"] == "chat.completion.chunk"
        assert (event["model"], event["system_fingerprint"]) == (MODEL, None)
    *choices, usage = events
    assert [e["choices"] for e in choices] == [
        [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        for delta, finish in [
            ({"role": "assistant", "content": ""}, None),
            *(({"content": token}, None) for token in TOKENS),
            ({}, "length"),
        ]
    ]
    assert all("usage" not in e for e in choices)
    assert usage["choices"] == []
    assert usage["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


async def test_a_stream_without_include_usage_has_no_usage_chunk(http: httpx.AsyncClient) -> None:
    events = await _events(http, _chat("hi", stream=True))
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events)


async def test_streamed_logprobs_come_with_their_tokens(http: httpx.AsyncClient) -> None:
    events = await _events(http, _chat("hi", stream=True, logprobs=True, top_logprobs=1))
    tokens = [e["choices"][0] for e in events if e["choices"][0]["delta"].get("content")]
    assert [c["logprobs"]["content"][0]["token"] for c in tokens] == TOKENS
    assert all(c["logprobs"]["refusal"] is None for c in tokens)
    assert all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 1 for c in tokens)
    assert events[0]["choices"][0]["logprobs"] is None  # the role frame has no token


async def test_a_streamed_tool_call_says_its_id_and_name_once(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    events = await _events(http, _chat("tools", stream=True))
    calls = [e["choices"][0]["delta"]["tool_calls"] for e in events[1:-1]]
    first = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert calls == [
        [first],
        [{"index": 0, "function": {"arguments": '{"city": '}}],
        [{"index": 0, "function": {"arguments": '"Paris"}'}}],
        [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}],
    ]
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "tools"}], stream=True
    )
    arguments: dict[int, str] = {}
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or ():
            assert call.function is not None
            arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
    assert {i: json.loads(a) for i, a in arguments.items()} == {0: {"city": "Paris"}, 1: {}}


async def test_a_whole_reply_collected_from_a_stream_merges_the_tool_calls(http: httpx.AsyncClient) -> None:
    body = (await http.post("/chat/completions", json=_chat("tools", logprobs=True))).json()
    choice = body["choices"][0]
    assert choice["logprobs"] == {"content": [], "refusal": None}
    assert choice["message"]["content"] is None
    weather = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": weather},
        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


async def test_models_are_listed_once_each_and_found_by_id(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    listed = (await http.get("/models")).json()
    assert listed == {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "created": 0, "owned_by": "local"},
            {"id": "b/c", "object": "model", "created": 0, "owned_by": "openai"},
        ],
    }
    assert (await client.models.retrieve("b/c")).owned_by == "openai"
    missing = await http.get("/models/zz")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_embeddings_as_floats_or_base64_say_the_same(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    floats = (await http.post("/embeddings", json={"input": ["a", "b"], "model": "emb"})).json()
    assert floats["data"][1] == {"object": "embedding", "index": 1, "embedding": [0.5, -2.0, 0.25]}
    assert (floats["object"], floats["model"], floats["usage"]) == (
        "list",
        "emb",
        {"prompt_tokens": 2, "total_tokens": 2},
    )
    packed = (await http.post("/embeddings", json={"input": "a", "encoding_format": "base64"})).json()
    assert struct.unpack("<3f", base64.b64decode(packed["data"][0]["embedding"])) == (0.5, -2.0, 0.25)
    read = await client.embeddings.create(input="a", model="emb")  # the client asks for base64
    assert read.data[0].embedding == [0.5, -2.0, 0.25]


async def test_the_openapi_document_describes_the_replies(http: httpx.AsyncClient) -> None:
    doc = (await http.get("http://shim/openapi.json")).json()
    ok = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/ChatCompletion")
    schemas = doc["components"]["schemas"]
    assert {"ChatCompletionChoice", "ChatCompletionMessage", "Usage", "ModelList"} <= set(schemas)
    # Required: what every reply has, nulls included; tool_calls only when there are some.
    assert set(schemas["ChatCompletion"]["required"]) == set(COMPLETION_KEYS)
    assert schemas["ChatCompletionMessage"]["required"] == ["role", "content", "refusal"]
