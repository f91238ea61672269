from __future__ import annotations

import grpc
import pytest

from llmservice import errors
from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice.registry import ProviderRegistry
from llmservice.server import codec
from llmservice.server.status import to_status
from llmservice.settings import Settings, SettingsError
from llmservice.types import ChatRequest, Completion, FinishReason, Message, Sampling, StreamEnd, Usage
from llmservice.validation import validate
from providers import FACTORIES


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


def test_encode_completion_and_end() -> None:
    usage = Usage(7, 3)
    reply = codec.encode_completion(Completion("hi", "m", "p", FinishReason.LENGTH, usage))
    assert (reply.content, reply.total_tokens, reply.finish_reason) == ("hi", 10, pb.FINISH_REASON_LENGTH)
    end = codec.encode_end(StreamEnd(FinishReason.STOP, usage), "m", "p")
    assert end.done
    assert end.total_tokens == 10
    assert end.finish_reason == pb.FINISH_REASON_STOP


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


def test_unexpected_errors_do_not_leak_their_message() -> None:
    code, details, _ = to_status(RuntimeError("secret-ish detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-ish" not in details


def test_unknown_provider_fails_at_start_up_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"'nope' \[env LLM_PROVIDER\].*known: ") as raised:
        ProviderRegistry.from_settings(Settings(provider="nope"))
    assert all(name in str(raised.value) for name in FACTORIES)
