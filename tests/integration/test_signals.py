"""Per-token signals on StreamChat, checked against the full distribution sent beside them."""

from __future__ import annotations

import json
import math

import grpc
import numpy as np
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

VOCAB = 49_152  # SmolLM2's vocabulary
STORY = [pb.ChatMessage(role="user", content="Tell me about the sea.")]
TRUNCATING = {"top_k", "top_p", "min_p"}


async def chunks_of(stub: pb_grpc.LLMServiceStub, request: pb.LLMChatRequest) -> list[pb.LLMChatChunk]:
    return [c async for c in stub.StreamChat(request)]


def sampled(**options: object) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(
        messages=STORY, max_tokens=8, temperature=0.8, seed=11, top_k=5, top_p=0.95, min_p=0.01, **options
    )  # type: ignore[arg-type]


async def test_signal_math_matches_the_full_distribution(stub: pb_grpc.LLMServiceStub) -> None:
    options = pb.SignalOptions(top_k=5, full_distribution=True)
    chunks = await chunks_of(stub, sampled(signal_options=options))
    tokens = [c for c in chunks if not c.done]
    assert tokens
    for chunk in tokens:
        s = chunk.signal
        p = np.array(s.full_distribution, dtype=np.float64)
        assert p.shape == (VOCAB,)
        assert p.sum() == pytest.approx(1.0, abs=1e-3)
        nz = p[p > 0]
        assert s.entropy == pytest.approx(float(-(nz * np.log2(nz)).sum()), rel=1e-3, abs=1e-4)
        assert 0 <= s.entropy <= math.log2(VOCAB)
        assert s.confidence == pytest.approx(p[chunk.token_id], rel=1e-4, abs=1e-7)
        probs = [c.prob for c in s.top_k]
        assert probs == sorted(probs, reverse=True)
        assert [c.id for c in s.top_k] == list(np.argsort(-p, kind="stable")[:5])
        assert s.top_gap == pytest.approx(probs[0] - probs[1], abs=1e-6)
        assert all(c.text for c in s.top_k)


async def test_stages_are_consistent_and_the_token_comes_from_the_last(stub: pb_grpc.LLMServiceStub) -> None:
    chunks = await chunks_of(stub, sampled(signal_options=pb.SignalOptions(sampler_stages=True)))
    for chunk in (c for c in chunks if not c.done):
        stages = list(chunk.signal.sampler_stages)
        assert [st.name for st in stages] == ["logits", "top_k", "top_p", "min_p", "temp"]
        assert stages[0].active_count == VOCAB
        assert stages[0].top1_prob == pytest.approx(chunk.signal.top_k[0].prob, rel=1e-5)
        counts = [st.active_count for st in stages]
        for before, after, stage in zip(counts, counts[1:], stages[1:], strict=False):
            if stage.name in TRUNCATING:
                assert after <= before
        last = stages[-1]
        assert last.active_count <= 5  # top_k=5: the snapshot lists every survivor
        assert chunk.token_id in [c.id for c in last.top_k]
        for st in stages:
            assert 0 <= st.entropy <= math.log2(max(st.active_count, 1)) + 1e-4
            assert st.top1_prob == pytest.approx(st.top_k[0].prob)


async def test_signals_do_not_change_the_output(stub: pb_grpc.LLMServiceStub) -> None:
    plain = await chunks_of(stub, sampled())
    with_stages = await chunks_of(stub, sampled(signal_options=pb.SignalOptions(sampler_stages=True)))
    assert [c.token for c in plain] == [c.token for c in with_stages]
    assert not any(c.HasField("signal") for c in plain)


async def test_greedy_confidence_is_the_top_candidate(stub: pb_grpc.LLMServiceStub) -> None:
    request = pb.LLMChatRequest(
        messages=STORY, max_tokens=6, temperature=0.0, signal_options=pb.SignalOptions()
    )
    for chunk in (c for c in await chunks_of(stub, request) if not c.done):
        assert len(chunk.signal.top_k) == 10
        assert chunk.token_id == chunk.signal.top_k[0].id
        assert chunk.signal.confidence == pytest.approx(chunk.signal.top_k[0].prob)


async def test_json_schema_constraint_yields_valid_json(stub: pb_grpc.LLMServiceStub) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
        },
        "required": ["name", "age"],
    }
    request = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content="Invent a person. Reply in JSON.")],
        max_tokens=80,
        response_format=pb.ResponseFormat(json_schema=json.dumps(schema)),
    )
    reply = await stub.Chat(request)
    assert reply.finish_reason == pb.FINISH_REASON_STOP
    value = json.loads(reply.content)
    assert isinstance(value["name"], str)
    assert len(value["name"]) <= 12
    assert isinstance(value["age"], int)
    assert set(value.get("pets", [])) <= {"cat", "dog"}
    assert len(value.get("pets", [])) <= 2


@pytest.mark.parametrize(
    ("response_format", "field", "says"),
    [
        (
            pb.ResponseFormat(json_schema='{"type": "integer", "minimum": 0}'),
            "response_format.json_schema",
            "'minimum'",
        ),
        (pb.ResponseFormat(json_schema="{not json"), "response_format.json_schema", "not valid JSON"),
        (pb.ResponseFormat(grammar="root ::= ("), "response_format.grammar", "could not parse"),
        (pb.ResponseFormat(json_object=False), "response_format", "set one of"),
    ],
)
async def test_constraints_that_cannot_be_enforced_are_refused(
    stub: pb_grpc.LLMServiceStub, response_format: pb.ResponseFormat, field: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(pb.LLMChatRequest(messages=STORY, response_format=response_format))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()
    assert says in caught.value.details()


async def test_json_object_constraint_and_a_grammar(stub: pb_grpc.LLMServiceStub) -> None:
    reply = await stub.Chat(
        pb.LLMChatRequest(
            messages=STORY,
            max_tokens=60,
            temperature=0.0,
            response_format=pb.ResponseFormat(grammar='root ::= "yes" | "no"'),
        )
    )
    assert reply.content in ("yes", "no")


async def test_greedy_reports_the_raw_stage_and_picks_its_top(stub: pb_grpc.LLMServiceStub) -> None:
    request = pb.LLMChatRequest(
        messages=STORY, max_tokens=4, temperature=0.0, signal_options=pb.SignalOptions(sampler_stages=True)
    )
    for chunk in (c for c in await chunks_of(stub, request) if not c.done):
        [raw] = chunk.signal.sampler_stages
        assert raw.name == "logits"
        assert raw.active_count == VOCAB
        assert chunk.token_id == raw.top_k[0].id
