"""IBM watsonx.ai's chat, as IBM's Java SDK (and the traffic README.md names) recorded it.

The gate plays IBM Cloud IAM too: `POST /identity/token` swaps the API key (form fields
`grant_type` and `apikey`) for a bearer token in IAM's reply shape. The chat endpoints then
want `Authorization: Bearer <that token>`, the `version` query parameter, and a
`project_id` or `space_id` in the body, refused in watsonx's words otherwise.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.responses import JSONResponse, Response

from llmservice.kernel.errors import (
    InvalidRequest,
    LLMServiceError,
    NotFound,
    ProviderAuthFailed,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.types import ChatRequest, FinishReason, Message, Sampling
from llmservice.providers.watsonx.provider import WatsonxProvider
from llmservice.providers.watsonx.settings import WatsonxSettings

from ..replay import Received
from ..suite import ASK_WEATHER, FORCE_WEATHER, Case, Expect, Vendor
from .rules import CHAT_PATHS, error, refusal

KEY = "wx-replay-api-key-0123456789"
PROJECT = "63dc4cf1-252f-424b-b52d-5cdd9814987f"
TOKEN = "eyJraWQiOiIyMDI1MDEwMTAwMDAiLCJhbGciOiJSUzI1NiJ9.replay.token"
GRANT = "urn:ibm:params:oauth:grant-type:apikey"


def make(url: str) -> WatsonxProvider:
    settings = WatsonxSettings(api_key=SecretStr(KEY), url=url, iam_url=url, project_id=PROJECT, model="m")
    return WatsonxProvider(settings)


def gate(received: Received) -> Response | None:
    """IAM's token exchange answered here; a chat call watsonx would refuse, refused."""
    if received.path == "/identity/token":
        return _token(received)
    if received.path not in CHAT_PATHS:
        return None
    if received.headers.get("authorization") != f"Bearer {TOKEN}":
        message = "Failed to authenticate the request due to invalid token: Failed to parse and verify token"
        return error(401, "authentication_token_not_valid", message, received.path)
    return refusal(received.path, received.query, received.json())


def _token(received: Received) -> Response:
    """IBM Cloud IAM's reply to an API key exchange (IBM's Java SDK, ChatServiceTest); any other
    exchange gets the one refusal IAM is recorded making, BXNIM0415E."""
    form = urllib.parse.parse_qs(received.body.decode())
    form_type = received.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    if not form_type or form.get("grant_type") != [GRANT] or form.get("apikey") != [KEY]:
        body = {
            "errorCode": "BXNIM0415E",
            "errorMessage": "Provided API key could not be found.",
            "context": {"requestId": uuid.uuid4().hex},
        }
        return JSONResponse(body, status_code=400)
    return JSONResponse(
        {
            "access_token": TOKEN,
            "refresh_token": "not_supported",
            "ims_user_id": 14364907,
            "token_type": "Bearer",
            "expires_in": 3600,
            "expiration": int(time.time()) + 3600,
            "scope": "ibm openid",
        }
    )


def _max_completion_tokens(body: Any) -> None:
    """The chat API deprecates `max_tokens` (and only warns): the limit must go as the other."""
    assert body["max_completion_tokens"] == 50, body
    assert "max_tokens" not in body, body


def _named_function(body: Any) -> None:
    """watsonx takes a named function in `tool_choice`, a mode in `tool_choice_option`."""
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}, body
    assert "tool_choice_option" not in body, body


CIAO = "Ciao"
WORLD_SERIES = (
    "The 2020 World Series was played at Globe Life Field in Arlington, Texas,\n"
    "which is the home stadium of the Texas Rangers.\n"
    "However, the series was played with no fans in attendance due to the COVID-19 pandemic.\n"
)
SUM_AND_SUBTRACTION = (
    ("chatcmpl-tool-af37032523934f019aa7258469580a7a", "sum", {"firstNumber": 2, "secondNumber": 2}),
    ("chatcmpl-tool-f762db03c60f441dba57bab09552bb7b", "subtraction", {"firstNumber": 2, "secondNumber": 2}),
)
LLAMA_REPLY = "chatcmpl-75021362a9edcdacca7976b97cc20f0d"
LIMITED = ChatRequest((Message("user", "Say hello."),), sampling=Sampling(max_tokens=50))

STOP = Expect(text=WORLD_SERIES, finish=FinishReason.STOP, usage=(59, 47, 0), calls=1)
STREAMED = Expect(text=CIAO, finish=FinishReason.STOP, usage=(38, 3, 0), calls=1)


def _refused(error_type: type[LLMServiceError], *says: str, calls: int = 1) -> Expect:
    return Expect(error=error_type, says=says, calls=calls)


def _credentials(status: int) -> Expect:
    return _refused(ProviderAuthFailed, f"rejected the service's credentials (HTTP {status})")


CASES = (
    # A refusal's words come as the text, with a finish that does not pass them off as an answer.
    Case(
        "refusal",
        ("chat_refusal",),
        Expect(text="I'm sorry, but I can't help with that request.", finish=FinishReason.CONTENT_FILTER),
    ),
    Case("refusal", ("stream_refusal",), Expect(text=CIAO, finish=FinishReason.CONTENT_FILTER), stream=True),
    Case("text", ("chat",), STOP),
    Case("stream", ("stream",), STREAMED, stream=True),
    Case("usage", ("chat",), STOP),
    Case("usage", ("stream",), STREAMED, stream=True),
    Case(
        "tools",
        ("chat_tools",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            usage=(85, 45, 0),
            tool_calls=(("call_abc123", "get_weather", {"location": "Paris", "unit": "celsius"}),),
        ),
        request=ASK_WEATHER,
    ),
    Case(
        "tools_stream",
        ("stream_tools",),
        Expect(finish=FinishReason.TOOL_CALLS, usage=(319, 49, 0), tool_calls=SUM_AND_SUBTRACTION),
        stream=True,
        request=ASK_WEATHER,
    ),
    # Llama 4's streamed tool calls carry no id at all: each gets its reply's id and its index.
    Case(
        "tools_stream_without_ids",
        ("stream_tools_without_ids",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            usage=(374, 49, 0),
            tool_calls=(
                (f"{LLAMA_REPLY}-call-0", "sum", {"firstNumber": 2, "secondNumber": 2}),
                (f"{LLAMA_REPLY}-call-1", "subtraction", {"firstNumber": 4, "secondNumber": 2}),
            ),
        ),
        stream=True,
        request=ASK_WEATHER,
    ),
    # A forced tool_choice: watsonx says `stop`, but the reply asks for a tool's result.
    Case(
        "forced_tool",
        ("chat_forced_tool",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            tool_calls=(
                (
                    "chatcmpl-tool-ef093f0cbbff4c6a973aa0873f73fc99",
                    "get_current_weather",
                    {"location": "Boston, MA", "unit": "fahrenheit"},
                ),
            ),
        ),
        request=FORCE_WEATHER,
        sent=_named_function,
    ),
    Case(
        "forced_tool",
        ("stream_forced_tool",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SUM_AND_SUBTRACTION),
        stream=True,
        request=FORCE_WEATHER,
        sent=_named_function,
    ),
    Case("max_completion_tokens", ("chat",), STOP, request=LIMITED, sent=_max_completion_tokens),
    Case(
        "max_completion_tokens",
        ("stream",),
        STREAMED,
        stream=True,
        request=LIMITED,
        sent=_max_completion_tokens,
    ),
    Case("cut_stream", ("stream_cut",), Expect(text=CIAO, error=Unavailable, calls=1), stream=True),
    # finish reasons
    Case("finish:stop", ("chat",), STOP),
    Case("finish:stop", ("stream",), STREAMED, stream=True),
    Case("finish:length", ("chat_length",), Expect(finish=FinishReason.LENGTH, usage=(12, 58, 0))),
    Case("finish:tool_calls", ("chat_tools",), Expect(finish=FinishReason.TOOL_CALLS), request=ASK_WEATHER),
    Case("finish:tool_calls", ("stream_tools",), Expect(finish=FinishReason.TOOL_CALLS), stream=True),
    Case("finish:time_limit", ("chat_time_limit",), Expect(text=WORLD_SERIES, finish=FinishReason.LENGTH)),
    Case(
        "finish:time_limit",
        ("stream_time_limit",),
        Expect(text=CIAO, finish=FinishReason.LENGTH),
        stream=True,
    ),
    # A failure watsonx reports as a finish reason: a whole call is tried again; a stream that
    # has sent text ends with the error.
    Case("error:finish_reason error", ("chat_error",), _refused(Unavailable, "finish_reason error", calls=2)),
    Case(
        "error:finish_reason error",
        ("stream_error",),
        Expect(text=CIAO, error=Unavailable, says=("finish_reason error",), calls=1),
        stream=True,
    ),
    Case(
        "error:finish_reason cancelled",
        ("chat_cancelled",),
        _refused(Unavailable, "finish_reason cancelled", calls=2),
    ),
    Case(
        "error:finish_reason cancelled",
        ("stream_cancelled",),
        Expect(text=CIAO, error=Unavailable, says=("finish_reason cancelled",), calls=1),
        stream=True,
    ),
    # errors
    Case(
        "error:400 invalid_request_entity",
        ("error_400_invalid_request_entity",),
        _refused(InvalidRequest, "HTTP 400", "Missing either space_id or project_id"),
    ),
    Case(
        "error:400 invalid_input_argument",
        ("error_400_invalid_input_argument",),
        _refused(InvalidRequest, "HTTP 400", "Invalid input argument provided"),
    ),
    Case(
        "error:400 json_validation_error",
        ("error_400_json_validation_error",),
        _refused(InvalidRequest, "Json document validation error: project_id should be a version 4 uuid"),
    ),
    Case(
        "error:400 json_type_error",
        ("error_400_json_type_error",),
        _refused(InvalidRequest, "response_format must be of type schemas.TextChatPropertyResponseFormat"),
    ),
    Case(
        "error:400 model_no_support_for_function",
        ("error_400_model_no_support_for_function",),
        _refused(InvalidRequest, "does not support function 'function_text_chat'"),
    ),
    Case(
        "error:400 model_not_supported",
        ("error_400_model_not_supported",),
        _refused(NotFound, "does not know model 'm'", "The requested model is not supported"),
    ),
    Case(
        "error:404 model_not_supported",
        ("error_404_model_not_supported",),
        _refused(NotFound, "does not know model 'm'", "is not supported"),
    ),
    Case(
        "error:404 model_not_supported",
        ("error_404_model_not_supported_stream",),
        _refused(NotFound, "does not know model 'm'", "Model 'doesn't exist' is not supported"),
        stream=True,
    ),
    # An expired token: a fresh one from IAM and one more call, then the reply.
    Case(
        "error:401 authentication_token_expired",
        ("error_401_token_expired", "chat"),
        Expect(text=WORLD_SERIES, finish=FinishReason.STOP, calls=2),
    ),
    Case(
        "error:401 authentication_token_expired",
        ("error_401_token_expired", "stream"),
        Expect(text=CIAO, finish=FinishReason.STOP, calls=2),
        stream=True,
    ),
    # Expired again with the fresh token: a rejected credential, after those two calls.
    Case(
        "error:401 authentication_token_expired",
        ("error_401_token_expired",),
        _refused(ProviderAuthFailed, "HTTP 401", calls=2),
    ),
    Case("error:401 authentication_token_not_valid", ("error_401_token_not_valid",), _credentials(401)),
    Case("error:403 authorization_rejected", ("error_403_authorization_rejected",), _credentials(403)),
    Case("error:403 user_authorization_failed", ("error_403_user_authorization_failed",), _credentials(403)),
    Case(
        "error:429 rate_limit_reached_requests",
        ("error_429_rate_limit",),
        _refused(ResourceExhausted, "Rate limit of 2 requests per 1s was reached", calls=2),
    ),
    Case(
        "error:429 token_quota_reached",
        ("error_429_token_quota_reached",),
        _refused(ResourceExhausted, "Token quota has been reached", calls=1),
    ),
    Case("error:500", ("error_500",), _refused(Unavailable, "HTTP 500", calls=2)),
    Case("error:503", ("error_503",), _refused(Unavailable, "HTTP 503", "Service Unavailable", calls=2)),
    Case("error:503", ("error_503",), _refused(Unavailable, "HTTP 503", calls=2), stream=True),
)

VENDOR = Vendor("watsonx", Path(__file__).parent, make, gate, CASES)
