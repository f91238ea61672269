from __future__ import annotations

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.app import local_target
from llmservice.grpc_api import codec, status
from llmservice.grpc_api.status import to_status
from llmservice.kernel import errors
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, Completion, FinishReason, Message, Sampling, StreamEnd, Usage
from llmservice.providers import entries
from llmservice.rest import errors as shim_errors
from llmservice.rest.errors import from_grpc
from llmservice.rest.openai import codec as shim_codec
from llmservice.rest.openai import protocol as oa
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings
from llmservice.service.validation import MAX_CACHE_SALT, validate


def test_decode_keeps_unset_apart_from_zero() -> None:
    unset = codec.decode_chat_request(pb.LLMChatRequest(user_prompt="hi"))
    assert unset.sampling == Sampling()
    zero = codec.decode_chat_request(pb.LLMChatRequest(user_prompt="hi", temperature=0.0, seed=0, top_p=1.0))
    assert zero.sampling == Sampling(temperature=0.0, top_p=1.0, seed=0)


def test_decode_messages_win_over_prompts() -> None:
    request = codec.decode_chat_request(
        pb.LLMChatRequest(
            system_prompt="s", user_prompt="u", messages=[pb.ChatMessage(role="user", content="m")]
        )
    )
    assert request.messages == (Message("user", "m"),)


def test_decode_unknown_role_names_its_index() -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        codec.decode_chat_request(
            pb.LLMChatRequest(
                messages=[pb.ChatMessage(role="user", content="a"), pb.ChatMessage(role="User", content="b")]
            )
        )
    assert caught.value.field == "messages[1].role"


def test_user_and_participant_names_reach_the_domain_request() -> None:
    body = oa.ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi", "name": "ada"}], "user": "end-user-7"}
    )
    request = codec.decode_chat_request(shim_codec.to_grpc(body, None))
    assert request.user == "end-user-7"
    assert request.messages == (Message("user", "hi", name="ada"),)


def test_encode_completion_and_end() -> None:
    usage = Usage(7, 3)
    reply = codec.encode_completion(Completion("hi", "m", "p", FinishReason.LENGTH, usage))
    assert (reply.content, reply.total_tokens, reply.finish_reason) == ("hi", 10, pb.FINISH_REASON_LENGTH)
    end = codec.encode_end(StreamEnd(FinishReason.STOP, usage), "m", "p")
    assert end.done
    assert end.total_tokens == 10
    assert end.finish_reason == pb.FINISH_REASON_STOP


def test_cached_prompt_tokens_survive_the_wire_whole_and_streamed() -> None:
    usage = Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=4)
    whole = codec.encode_completion(Completion("hi", "m", "p", FinishReason.STOP, usage))
    end = codec.encode_end(StreamEnd(FinishReason.STOP, usage), "m", "p")
    whole = pb.LLMChatResponse.FromString(whole.SerializeToString())
    end = pb.LLMChatChunk.FromString(end.SerializeToString())
    for reply in (whole, end):
        assert (reply.prompt_tokens, reply.cached_prompt_tokens, reply.total_tokens) == (7, 4, 10)
    nothing_cached = codec.encode_end(StreamEnd(FinishReason.STOP, Usage(7, 3)), "m", "p")
    assert nothing_cached.cached_prompt_tokens == 0


def test_cache_salt_reaches_the_domain_request_from_grpc_and_from_the_openai_body() -> None:
    wire = pb.LLMChatRequest(user_prompt="hi", cache_salt="team-a")
    request = codec.decode_chat_request(pb.LLMChatRequest.FromString(wire.SerializeToString()))
    assert (request.cache_salt, request.principal) == ("team-a", "")
    body = oa.ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "cache_salt": "team-b"}
    )
    assert codec.decode_chat_request(shim_codec.to_grpc(body, None)).cache_salt == "team-b"
    plain = oa.ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert codec.decode_chat_request(shim_codec.to_grpc(plain, None)).cache_salt == ""


def test_a_cache_salt_past_its_limit_is_refused_by_name() -> None:
    validate(ChatRequest((Message("user", "hi"),), cache_salt="s" * MAX_CACHE_SALT))
    with pytest.raises(errors.InvalidRequest) as caught:
        validate(ChatRequest((Message("user", "hi"),), cache_salt="s" * (MAX_CACHE_SALT + 1)))
    assert caught.value.field == "cache_salt"
    assert f"at most {MAX_CACHE_SALT}" in caught.value.message


def test_the_shim_tells_cached_prompt_tokens_where_openai_does() -> None:
    reply = pb.LLMChatResponse(prompt_tokens=7, completion_tokens=3, cached_prompt_tokens=4)
    assert shim_codec.usage(reply).model_dump() == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    end = pb.LLMChatChunk(done=True, prompt_tokens=7, completion_tokens=3)
    assert shim_codec.usage(end).model_dump()["prompt_tokens_details"] == {
        "cached_tokens": 0
    }  # present, 0: none


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (Sampling(max_tokens=-1), "max_tokens"),
        (Sampling(temperature=2.01), "temperature"),
        (Sampling(top_p=1.5), "top_p"),
        (Sampling(stop=("a",) * 17), "stop"),
    ],
)
def test_validation_names_the_field(sampling: Sampling, field: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        validate(ChatRequest((Message("user", "hi"),), sampling=sampling))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidRequest("f", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.ProviderAuthFailed("openai rejected the key"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Cancelled("gone"), grpc.StatusCode.CANCELLED),
        (errors.LLMServiceError("odd"), grpc.StatusCode.INTERNAL),
    ],
)
def test_every_domain_error_has_its_status(error: errors.LLMServiceError, code: grpc.StatusCode) -> None:
    assert to_status(error)[0] == code


def test_retry_hint_travels_in_trailers() -> None:
    code, _, trailers = to_status(errors.ResourceExhausted("queue full", retry_after_s=2.5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers == (("retry-after", "2.5"),)


def test_the_field_at_fault_travels_in_trailers_and_the_text_stays_readable() -> None:
    code, details, trailers = to_status(errors.InvalidRequest("messages[1].role", "unknown role 'User'"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "messages[1].role: unknown role 'User'"
    assert trailers == (("llm-error-param", "messages[1].role"),)


def test_a_field_that_metadata_cannot_carry_stays_in_the_text_only() -> None:
    assert to_status(errors.InvalidRequest("tools[0].名前", "bad"))[2] == ()


def test_what_was_not_found_travels_in_trailers_when_the_servicer_knows() -> None:
    missing = errors.NotFound("model 'x' not found")
    assert to_status(missing, not_found="model_not_found")[2] == (("llm-error-kind", "model_not_found"),)
    assert to_status(missing)[2] == ()  # e.g. a session: no kind claimed
    assert to_status(errors.Unavailable("down"), not_found="model_not_found")[2] == ()


def _rpc_error(code: grpc.StatusCode, details: str, *trailers: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details)


def test_the_shim_takes_param_and_code_from_trailers_not_from_the_text() -> None:
    bad = from_grpc(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "temperature: 5 is too hot"))
    assert (bad.status, bad.param, bad.message) == (400, None, "temperature: 5 is too hot")
    bad = from_grpc(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "too hot", ("llm-error-param", "temperature"))
    )
    assert bad.param == "temperature"
    missing = from_grpc(_rpc_error(grpc.StatusCode.NOT_FOUND, "model 'x' not found"))
    assert (missing.status, missing.code) == (404, None)
    missing = from_grpc(_rpc_error(grpc.StatusCode.NOT_FOUND, "gone", ("llm-error-kind", "model_not_found")))
    assert (missing.code, missing.param) == ("model_not_found", "model")


@pytest.mark.parametrize(("hint", "header"), [("2.5", "2"), ("0.2", "1"), ("30", "30"), ("soon", None)])
def test_the_shim_turns_the_retry_hint_into_whole_seconds(hint: str, header: str | None) -> None:
    full = from_grpc(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", ("retry-after", hint)))
    assert (full.status, full.retry_after) == (429, header)


def test_the_shim_and_the_service_agree_on_trailer_keys() -> None:
    assert (shim_errors.RETRY_AFTER_KEY, shim_errors.PARAM_KEY, shim_errors.KIND_KEY) == (
        status.RETRY_AFTER_KEY,
        status.PARAM_KEY,
        status.KIND_KEY,
    )


def test_unexpected_errors_do_not_leak_their_message() -> None:
    code, details, _ = to_status(RuntimeError("secret-ish detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-ish" not in details


def test_unknown_provider_fails_at_start_up_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"'nope' \[env LLM_PROVIDER\].*known: ") as raised:
        ProviderRegistry.from_settings(Settings(provider="nope"))
    assert all(name in str(raised.value) for name in entries())


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("0.0.0.0", "127.0.0.1:50051"),
        ("", "127.0.0.1:50051"),
        ("::", "[::1]:50051"),
        ("::1", "[::1]:50051"),
        ("fe80::2", "[fe80::2]:50051"),
        ("example.internal", "example.internal:50051"),
    ],
)
def test_the_shim_reaches_its_own_service_at_a_well_formed_target(host: str, target: str) -> None:
    assert local_target(host, 50051) == target
