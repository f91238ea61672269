"""How the `watsonx` provider speaks IBM watsonx.ai's chat API: the facts its entry prints
(docs/providers.md) and the provider itself reads, so the two cannot drift.

No SDK or httpx imports: listing the provider kinds loads this, not the provider.
"""

from __future__ import annotations

from llmservice.kernel.provider import FIRST_CALL_ONLY, Wire
from llmservice.kernel.types import FinishReason

# The chat API's finish reasons (IBM's API reference, TextChatResultChoice.finish_reason).
# `stop` with tool calls in the reply is TOOL_CALLS: watsonx says `stop` when tool_choice
# named the function. The text generation API's stop reasons (eos_token, max_tokens,
# stop_sequence) are not the chat API's, but older and on-premises releases have sent
# them in chat replies: read, they keep a cut-short reply from passing as a finished one.
FINISH: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "time_limit": FinishReason.LENGTH,  # cut short by the request's time limit, as by length
    "max_tokens": FinishReason.LENGTH,
    "eos_token": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
}
_TEXT_API_REASON = (
    "the text generation API's reason, read should a chat reply carry it; the chat API "
    "documents none, so no chat recording of it exists"
)
# Finish reasons that say the reply did not finish: the caller gets UNAVAILABLE, not a reply.
FAILED: dict[str, str] = {
    "error": "watsonx reported an error while generating",
    "cancelled": "watsonx cancelled the generation",  # not our caller: it would not be reading
}

TOKEN_EXPIRED = "authentication_token_expired"  # a 401 cured by a fresh IAM token
NOT_FOUND = "model_not_supported"  # an unknown model_id, whether watsonx says 400 or 404
NOT_RETRIED = frozenset({"token_quota_reached"})  # a 429 that waiting seconds does not cure

WIRE = Wire(
    honoured={
        "messages": "`messages`, OpenAI-shaped turns (tool calls and tool results included)",
        "model": "`model_id`, with `project_id` from the settings",
        "temperature": "`temperature` (the settings' `temperature` when unset)",
        "top_p": "`top_p`",
        "max_tokens": "`max_completion_tokens` (the chat API deprecates `max_tokens`)",
        "seed": "`seed`",
        "stop": "`stop`",
        "frequency_penalty": "`frequency_penalty`",
        "presence_penalty": "`presence_penalty`",
        "tools": "`tools`, as functions",
        "(reply) refusal": "a message's or delta's `refusal` comes as the text, with finish content_filter",
        "tool_choice": "a named function as `tool_choice`; auto, none or required as `tool_choice_option`",
        "parallel_tool_calls": FIRST_CALL_ONLY,
        "constraint": "`response_format`: `json_object`, or `json_schema` with the schema",
        "api_key": "exchanged at IBM Cloud IAM (`POST /identity/token`) for a bearer token, "
        "reused until a minute before it expires; a key IAM refuses (400 BXNIM0415E) is "
        "FAILED_PRECONDITION",
    },
    refused={
        "top_k": "the chat API has no such parameter",
        "min_p": "the chat API has no such parameter",
        "repetition_penalty": "the chat API has no such parameter",
        "signals": "the chat API has no per-token signal options",
        "constraint.grammar": "the chat API takes no GBNF grammar",
        "attachments": "this provider sends watsonx no attachments (nor image parts)",
    },
    finish=FINISH,
    errors={
        "400 invalid_request_entity": "INVALID_ARGUMENT, watsonx's message",
        "400 invalid_input_argument": "INVALID_ARGUMENT, watsonx's message",
        "400 json_validation_error": "INVALID_ARGUMENT, watsonx's message",
        "400 json_type_error": "INVALID_ARGUMENT, watsonx's message",
        "400 model_no_support_for_function": "INVALID_ARGUMENT, watsonx's message",
        "400 model_not_supported": "NOT_FOUND, naming the model",
        "401 authentication_token_expired": "a fresh IAM token and one more call; "
        "FAILED_PRECONDITION if that is refused too",
        "401 authentication_token_not_valid": "FAILED_PRECONDITION, naming the provider, never the key",
        "403 authorization_rejected": "FAILED_PRECONDITION, naming the provider, never the key",
        "403 user_authorization_failed": "FAILED_PRECONDITION, naming the provider, never the key",
        "404 model_not_supported": "NOT_FOUND, naming the model",
        "429 rate_limit_reached_requests": "RESOURCE_EXHAUSTED, retried",
        "429 token_quota_reached": "RESOURCE_EXHAUSTED, not retried: the quota lasts past any backoff",
        "500": "UNAVAILABLE, retried",
        "503": "UNAVAILABLE, retried",
        "finish_reason error": "UNAVAILABLE, after any text that came (a whole call is retried)",
        "finish_reason cancelled": "UNAVAILABLE, after any text that came (a whole call is retried)",
    },
    unrecorded={
        **{f"finish:{reason}": _TEXT_API_REASON for reason in ("max_tokens", "eos_token", "stop_sequence")},
    },
)
