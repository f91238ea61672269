"""The `grpc` provider's codec against grpc_api's: what one side encodes, the other decodes
to the same domain values."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.grpc_api import codec as server
from llmservice.grpc_api import status
from llmservice.kernel import errors
from llmservice.kernel.embedding import Embeddings, EmbedRequest
from llmservice.kernel.types import (
    Attachment,
    Candidate,
    Capabilities,
    ChatRequest,
    Completion,
    Constraint,
    FinishReason,
    Message,
    ModelInfo,
    SamplerStage,
    Sampling,
    SignalOptions,
    StreamEnd,
    TokenDelta,
    TokenSignal,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from llmservice.providers.grpc_backend import codec
from llmservice.service.validation import MAX_CACHE_SALT

RICH = ChatRequest(
    messages=(
        Message("system", "be brief"),
        Message("user", "weather in Paris and Rome?", name="ada"),
        Message(
            "assistant",
            "",
            (ToolCall("c1", "weather", '{"city": "Paris"}'), ToolCall("c2", "weather", '{"city": "Rome"}')),
        ),
        Message("tool", "18C", tool_call_id="c1", name="weather"),
        Message("tool", "21C", tool_call_id="c2"),
    ),
    model="qwen",
    sampling=Sampling(
        temperature=0.7,
        top_p=0.9,
        max_tokens=128,
        stop=("\n\n", "END"),
        seed=42,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        frequency_penalty=-0.5,
        presence_penalty=0.25,
    ),
    attachments=(Attachment("text/plain", "notes", "notes.txt"), Attachment("image/png", "iVBORw0KGgo=")),
    priority=10,
    signals=SignalOptions(top_k=5, sampler_stages=True, full_distribution=True),
    constraint=Constraint("json_schema", '{"type": "object"}'),
    tools=(
        Tool(
            "weather", "the weather in a city", '{"type": "object", "properties": {"city": {}}}', strict=True
        ),
        Tool("now"),
    ),
    tool_choice=ToolChoice("function", "weather"),
    deadline=1234.5,
    user="end-user-7",
    cache_salt="tenant-a",
    parallel_tool_calls=False,
)


def _there(request: ChatRequest, provider: str = "") -> ChatRequest:
    """What the backend reads of `request`, sent through the wire as bytes."""
    message = codec.encode_chat_request(request.model, request, provider)
    return server.decode_chat_request(pb.LLMChatRequest.FromString(message.SerializeToString()))


def test_a_rich_request_reads_the_same_at_the_backend_but_its_deadline() -> None:
    assert _there(RICH) == dataclasses.replace(RICH, deadline=None)


@pytest.mark.parametrize(
    "constraint",
    [
        None,
        Constraint("json_schema", '{"type": "object"}'),
        Constraint("json_object"),
        Constraint("grammar", "root ::= x"),
    ],
)
@pytest.mark.parametrize(
    "choice", [None, ToolChoice(), ToolChoice("none"), ToolChoice("required"), ToolChoice("function", "now")]
)
def test_every_constraint_and_tool_choice_round_trips(
    constraint: Constraint | None, choice: ToolChoice | None
) -> None:
    request = dataclasses.replace(RICH, constraint=constraint, tool_choice=choice, deadline=None)
    assert _there(request) == request


@pytest.mark.parametrize("signals", [None, SignalOptions(), SignalOptions(top_k=1)])
@pytest.mark.parametrize("parallel", [None, True, False])
def test_signal_options_and_parallel_tool_calls_keep_unset_apart(
    signals: SignalOptions | None, parallel: bool | None
) -> None:
    request = dataclasses.replace(RICH, signals=signals, parallel_tool_calls=parallel, deadline=None)
    assert _there(request) == request


def test_unset_sampling_stays_unset_and_zeros_stay_zeros() -> None:
    plain = ChatRequest((Message("user", "hi"),))
    assert _there(plain) == plain
    zeros = dataclasses.replace(
        plain,
        sampling=Sampling(
            temperature=0.0,
            top_p=1.0,
            seed=0,
            min_p=0.0,
            repetition_penalty=1.0,
            frequency_penalty=0.0,
            presence_penalty=0.0,
        ),
    )
    assert _there(zeros) == zeros


def test_a_raw_prompt_goes_as_it_is() -> None:
    request = ChatRequest((), model="base", raw_prompt="Once upon a time")
    assert _there(request) == request


def test_the_provider_is_the_backends_default_unless_named() -> None:
    assert codec.encode_chat_request("m", RICH).provider == ""
    assert _there(RICH, "llamacpp").provider == "llamacpp"
    assert codec.encode_chat_request("other", RICH).model == "other"


def test_the_principal_partitions_the_backends_prompt_cache() -> None:
    def salt(principal: str, cache_salt: str = "tenant-a") -> str:
        request = dataclasses.replace(RICH, principal=principal, cache_salt=cache_salt)
        return codec.encode_chat_request("m", request).cache_salt

    assert salt("alice") == salt("alice")
    assert salt("alice") != salt("bob")
    assert salt("alice") != salt("alice", "tenant-b")
    assert salt("alice", "") != salt("bob", "")
    assert "alice" not in salt("alice")
    assert len(salt("alice", "x" * MAX_CACHE_SALT)) <= MAX_CACHE_SALT
    assert salt("") == "tenant-a"  # no core routed it: the caller's salt as it is


def _only_event(chunk: pb.LLMChatChunk, provider: str = "here") -> object:
    events = codec.decode_chunk(pb.LLMChatChunk.FromString(chunk.SerializeToString()), provider)
    assert len(events) == 1
    return events[0]


@pytest.mark.parametrize("source", ["engine", "upstream_logprobs"])
def test_a_token_comes_back_with_its_whole_signal(source: str) -> None:
    signal = TokenSignal(
        confidence=0.75,
        entropy=1.5,
        top_gap=0.5,
        top_k=(Candidate(7, " the", 0.75), Candidate(9, " a", 0.25)),
        full_distribution=np.array([0.75, 0.25, 0.0], dtype=np.float32),
        stages=(
            SamplerStage("top_k", 2, 0.75, 0.8125, (Candidate(7, " the", 0.75), Candidate(9, " a", 0.25))),
            SamplerStage("temperature", 2, 0.875, 0.5, (Candidate(7, " the", 0.875),)),
        ),
        source=source,  # type: ignore[arg-type]
    )
    back = _only_event(server.encode_token(TokenDelta(" the", 7, signal), "m"))
    assert isinstance(back, TokenDelta)
    assert back.signal is not None
    assert back.signal.full_distribution is not None
    np.testing.assert_array_equal(back.signal.full_distribution, signal.full_distribution)
    assert back.signal.full_distribution.dtype == np.float32
    unarrayed = dataclasses.replace(back, signal=dataclasses.replace(back.signal, full_distribution=None))
    assert unarrayed == TokenDelta(" the", 7, dataclasses.replace(signal, full_distribution=None))


@pytest.mark.parametrize(
    "delta", [TokenDelta("hi"), TokenDelta("", 17), TokenDelta("x", 0), TokenDelta("")], ids=repr
)
def test_a_token_without_signal_keeps_its_id_or_none(delta: TokenDelta) -> None:
    assert _only_event(server.encode_token(delta, "m")) == delta


def test_an_engine_signal_without_distribution_or_stages_has_none() -> None:
    signal = TokenSignal(0.5, 1.0, 0.25, (Candidate(1, "a", 0.5),))
    assert _only_event(server.encode_token(TokenDelta("a", 1, signal), "m")) == TokenDelta("a", 1, signal)


@pytest.mark.parametrize(
    "delta", [ToolCallDelta(0, "c1", "weather", '{"ci'), ToolCallDelta(1, arguments='ty": "Rome"}')], ids=repr
)
def test_a_tool_call_piece_comes_back(delta: ToolCallDelta) -> None:
    assert _only_event(server.encode_tool_call(delta, "m")) == delta


@pytest.mark.parametrize("finish", list(FinishReason))
def test_the_end_comes_back_with_its_usage_served_by_this_provider(finish: FinishReason) -> None:
    end = StreamEnd(finish, Usage(70, 30, cached_tokens=64, max_tokens_capped_to=30), "here")
    assert _only_event(server.encode_end(end, "m", "llamacpp")) == end
    assert (
        _only_event(server.encode_end(dataclasses.replace(end, provider="remote-deployment"), "m", "x"))
        == end
    )


def test_a_plugins_final_chunk_may_carry_the_last_token() -> None:
    chunk = pb.LLMChatChunk(token="!", done=True, prompt_tokens=3, completion_tokens=2)
    assert codec.decode_chunk(chunk, "here") == [
        TokenDelta("!"),
        StreamEnd(FinishReason.STOP, Usage(3, 2), "here"),  # unspecified reads as a stop
    ]


@pytest.mark.parametrize("finish", list(FinishReason))
def test_a_completion_comes_back_served_by_this_provider(finish: FinishReason) -> None:
    completion = Completion(
        "it is 18C",
        "qwen",
        "here",
        finish,
        Usage(70, 30, cached_tokens=64, max_tokens_capped_to=30),
        (ToolCall("c1", "weather", '{"city": "Paris"}'),),
    )
    wire = server.encode_completion(dataclasses.replace(completion, provider="llamacpp"))
    assert (
        codec.decode_chat_response(pb.LLMChatResponse.FromString(wire.SerializeToString()), "here")
        == completion
    )


def test_an_unspecified_finish_reads_as_a_stop_or_tool_calls() -> None:
    assert codec.decode_chat_response(pb.LLMChatResponse(content="x"), "p").finish_reason is FinishReason.STOP
    called = pb.LLMChatResponse(tool_calls=[pb.ToolCall(id="c", name="f", arguments_json="{}")])
    assert codec.decode_chat_response(called, "p").finish_reason is FinishReason.TOOL_CALLS


MODELS = [
    ModelInfo(
        "qwen",
        "llamacpp",
        context_length=32768,
        is_default=True,
        loaded=False,
        capabilities=Capabilities(
            streaming=True, tools=True, vision=True, embeddings=False, signals=True, completion_only=False
        ),
        quantization="Q4_K_M",
        size_bytes=4_000_000_000,
        device="CUDA0",
        gpu_layers=29,
        layers=29,
    ),
    ModelInfo("small", "llamacpp", device="CPU", layers=31, batch_invariant=True),
    ModelInfo("base", "llamacpp", capabilities=Capabilities(streaming=False, completion_only=True)),
    ModelInfo("embedder", "openai", capabilities=Capabilities(embeddings=True)),
]


def test_models_come_back_as_this_providers() -> None:
    wire = pb.ListModelsResponse.FromString(server.encode_models(MODELS).SerializeToString())
    assert codec.decode_models(wire, "here") == [dataclasses.replace(m, provider="here") for m in MODELS]
    assert [m.id for m in codec.decode_models(wire, "here", only="llamacpp")] == ["qwen", "small", "base"]


@pytest.mark.parametrize("dimensions", [None, 256])
def test_an_embed_request_reads_the_same_at_the_backend(dimensions: int | None) -> None:
    request = EmbedRequest(("a", "b"), model="e5", dimensions=dimensions, user="u", positions=(3, 5))
    wire = codec.encode_embed_request("e5", request, "openai")
    assert server.decode_embed_request(wire) == EmbedRequest(
        ("a", "b"), model="e5", provider="openai", dimensions=dimensions, user="u"
    )


def test_embeddings_come_back_as_float32_vectors() -> None:
    vectors = (np.array([0.5, -1.0, 2.0], dtype=np.float32), np.array([0.0, 0.25, 1.0], dtype=np.float32))
    wire = server.encode_embeddings(Embeddings(vectors, "e5", "openai", prompt_tokens=9, cached=1))
    result = codec.decode_embed_response(pb.EmbedResponse.FromString(wire.SerializeToString()))
    assert result.prompt_tokens == 9
    assert len(result.vectors) == 2
    for back, sent in zip(result.vectors, vectors, strict=True):
        assert back.dtype == np.float32
        np.testing.assert_array_equal(back, sent)


def test_the_trailer_keys_are_the_servers() -> None:
    assert (codec.RETRY_AFTER_KEY, codec.PARAM_KEY, codec.KIND_KEY) == (
        status.RETRY_AFTER_KEY,
        status.PARAM_KEY,
        status.KIND_KEY,
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (errors.InvalidRequest("messages[1].role", "unknown role"), errors.InvalidRequest),
        (
            errors.ContentFiltered("messages", "violence", message="filtered: violence"),
            errors.ContentFiltered,
        ),
        (errors.NotFound("no model 'x'"), errors.NotFound),
        (errors.ResourceExhausted("queue full", retry_after_s=2.5), errors.ResourceExhausted),
        (errors.RateLimited("60 requests a minute", retry_after_s=1.5), errors.RateLimited),
        (errors.BudgetExhausted("spent", retry_after_s=3600), errors.BudgetExhausted),
        (errors.ProviderAuthFailed("provider openai rejected the key"), errors.ProviderAuthFailed),
        (errors.Unavailable("draining", retry_after_s=3), errors.Unavailable),
        (errors.DeadlineExceeded("too slow"), errors.DeadlineExceeded),
        (errors.ProviderTimeout("no connection in time"), errors.DeadlineExceeded),
        (errors.Cancelled("gone"), errors.Cancelled),
        # The backend refused this service's credentials: our caller's provider failing.
        (errors.Unauthenticated("bad key"), errors.ProviderAuthFailed),
        (errors.PermissionDenied("not yours"), errors.ProviderAuthFailed),
        (errors.LLMServiceError("odd"), errors.Unavailable),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_the_backends_status_comes_back_as_the_domain_error(
    raised: errors.LLMServiceError, expected: type[errors.LLMServiceError]
) -> None:
    code, details, trailers = status.to_status(raised, status.MODEL_NOT_FOUND)
    back = codec.error_from_status("gpu", code, details, grpc.aio.Metadata(*trailers))
    assert type(back) is expected
    assert back.message == f"provider gpu: {raised.message}"
    assert back.retry_after_s == raised.retry_after_s
    if isinstance(raised, errors.InvalidRequest):
        assert isinstance(back, errors.InvalidRequest)
        assert back.field == raised.field
    assert back.should_retry is (False if expected is errors.BudgetExhausted else None)


def test_an_unexpected_server_error_comes_back_unavailable() -> None:
    code, details, trailers = status.to_status(RuntimeError("boom"))
    back = codec.error_from_status("gpu", code, details, trailers)
    assert type(back) is errors.Unavailable
    assert back.retry_after_s is None


def test_odd_trailers_are_ignored() -> None:
    trailers = (("retry-after", "soon"), ("llm-error-param-bin", b"\x00"), ("llm-error-kind", "nope"))
    back = codec.error_from_status("gpu", grpc.StatusCode.RESOURCE_EXHAUSTED, "full", trailers)
    assert type(back) is errors.ResourceExhausted
    assert back.retry_after_s is None
    assert (
        codec.error_from_status(
            "gpu", grpc.StatusCode.UNAVAILABLE, "x", (("retry-after", "-1"),)
        ).retry_after_s
        is None
    )
    bare = codec.error_from_status("gpu", grpc.StatusCode.INVALID_ARGUMENT, "bad", ())
    assert isinstance(bare, errors.InvalidRequest)
    assert bare.field == ""
    assert bare.message == "provider gpu: bad"
