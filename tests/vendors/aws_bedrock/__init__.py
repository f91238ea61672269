"""AWS Bedrock (Converse, ConverseStream): its recorded replies and streams, the requests it
refuses, and the suite's cases over them.

The gate is what AWS does before a model runs: it checks the SigV4 signature (recomputed
from the request as sent and the credentials the suite sets in the environment) and the
Converse body rules, and answers in AWS's own error shape (`rules.py`, which the scripted
fake asks too). botocore comes with the `bedrock` extra: without it this package does
not import and the suite skips Bedrock.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.credentials
from starlette.responses import Response

from llmservice.kernel.errors import (
    InvalidRequest,
    NotFound,
    ProviderAuthFailed,
    ProviderTimeout,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import FinishReason
from llmservice.providers.bedrock.provider import BedrockProvider
from llmservice.providers.bedrock.settings import BedrockSettings
from llmservice.providers.remote.base import ANY_INPUT

from ..replay import Received
from ..suite import AFTER_TOOLS, ASK_WEATHER, FORCE_WEATHER, Case, Expect, Vendor
from .rules import aws_error, body_refusal, signature_refusal

REGION = "eu-west-1"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"  # its ":" is %3A on the wire, and in the signature
# What tests/integration/test_vendor_conformance.py puts in the environment.
CREDENTIALS = botocore.credentials.Credentials("AKIDFAKE", "fake-secret-for-the-replay")
_OPERATION = re.compile(r"/model/[^/]+/(converse|converse-stream)")


def make(url: str) -> Provider:
    return BedrockProvider(BedrockSettings(model=MODEL, region=REGION, endpoint_url=url))


def gate(received: Received) -> Response | None:
    """What AWS answers a call it refuses: an unknown operation, a signature it does not take,
    a Converse body it does not accept."""
    if received.method != "POST" or not _OPERATION.fullmatch(received.path):
        return aws_error(404, "UnknownOperationException", "")
    url = f"http://{received.headers.get('host', '')}{received.raw_path or received.path}"
    refusal = signature_refusal(received.method, url, received.headers, received.body, CREDENTIALS, REGION)
    if refusal is not None:
        return refusal
    if (problem := body_refusal(received.json())) is not None:
        return aws_error(400, "ValidationException", problem)
    return None


def _tools_sent(names: list[str], *, choice: dict[str, Any] | None = None) -> Any:
    """A check of the toolConfig sent: these tools, this toolChoice (None: none sent)."""

    def check(body: Any) -> None:
        config = body["toolConfig"]
        assert [t["toolSpec"]["name"] for t in config["tools"]] == names, config
        assert config.get("toolChoice") == choice, config

    return check


def _history_tool_declared(body: Any) -> None:
    """AFTER_TOOLS offers no tools; its history calls get_weather, so that one is declared,
    with a schema that takes any object, and no toolChoice."""
    _tools_sent(["get_weather"])(body)
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": json.loads(ANY_INPUT)}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


SONG = (("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "top_song", {"sign": "WZPZ"}),)
DOC_TEXT = (
    'Here is a list of 3 pop songs by artists from the United Kingdom:\n\n1. "Wannabe" by Spice Girls\n'
    '2. "Bitter Sweet Symphony" by The Verve \n3. "Don\'t Look Back in Anger" by Oasis'
)
GUARDRAIL_TEXT = "Sorry, the model cannot answer this question."

CASES = (
    # --- the kinds every vendor covers ---
    Case(
        "text",
        ("converse_text",),
        Expect(text=DOC_TEXT, finish=FinishReason.STOP, usage=(125, 60, 0), calls=1),
    ),
    Case(
        "stream",
        ("stream_text",),
        Expect(text=" Title: The", finish=FinishReason.LENGTH, usage=(47, 20, 0), calls=1),
        stream=True,
    ),
    Case(
        "tools",
        ("converse_tool_use",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SONG, calls=1),
        request=ASK_WEATHER,
        sent=_tools_sent(["get_weather"]),
    ),
    Case(
        "tools_stream",
        ("stream_tool_use",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SONG, usage=(412, 58, 0), calls=1),
        stream=True,
        request=ASK_WEATHER,
        sent=_tools_sent(["get_weather"]),
    ),
    Case(
        "forced_tool",
        ("converse_tool_use",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SONG, calls=1),
        request=FORCE_WEATHER,
        sent=_tools_sent(["get_weather"], choice={"tool": {"name": "get_weather"}}),
    ),
    # Bedrock has no refusal field: a guardrail that blocks is its refusal, its message the text.
    Case(
        "refusal",
        ("converse_guardrail",),
        Expect(text=GUARDRAIL_TEXT, finish=FinishReason.CONTENT_FILTER, usage=(12, 0, 0), calls=1),
    ),
    # inputTokens leave out the cached ones: the prompt is 25 + 1024 read + 100 written.
    Case("usage", ("converse_usage_cache",), Expect(usage=(1149, 60, 1024), finish=FinishReason.STOP)),
    Case(
        "cut_stream",
        ("stream_cut",),
        Expect(text=" Title", error=Unavailable, says=("cut the connection",), calls=1),
        stream=True,
    ),
    # --- every stopReason of the service model ---
    Case("finish:end_turn", ("converse_after_tool",), Expect(finish=FinishReason.STOP)),
    Case("finish:stop_sequence", ("converse_stop_sequence",), Expect(finish=FinishReason.STOP)),
    Case("finish:max_tokens", ("stream_text",), Expect(finish=FinishReason.LENGTH), stream=True),
    Case(
        "finish:model_context_window_exceeded",
        ("converse_context_window",),
        Expect(finish=FinishReason.LENGTH, usage=(199990, 10, 0)),
    ),
    Case("finish:tool_use", ("stream_tool_use",), Expect(finish=FinishReason.TOOL_CALLS), stream=True),
    Case(
        "finish:guardrail_intervened",
        ("stream_guardrail",),
        Expect(text=GUARDRAIL_TEXT, finish=FinishReason.CONTENT_FILTER),
        stream=True,
    ),
    Case(
        "finish:content_filtered",
        ("converse_content_filtered",),
        Expect(text="", finish=FinishReason.CONTENT_FILTER, usage=(14, 0, 0)),
    ),
    # A malformed reply is no answer: a provider error, retried like one.
    Case(
        "error:stopReason malformed_tool_use",
        ("converse_malformed_tool_use",),
        Expect(error=Unavailable, says=("malformed_tool_use", "tool call"), calls=2),
    ),
    Case(
        "error:stopReason malformed_model_output",
        ("stream_malformed_model_output",),
        Expect(text=" Title: The", error=Unavailable, says=("malformed_model_output",), calls=1),
        stream=True,
    ),
    # --- every error of Converse and ConverseStream in the service model ---
    Case(
        "error:400 ValidationException",
        ("error_validation",),
        Expect(error=InvalidRequest, says=("ValidationException", "on-demand throughput"), calls=1),
    ),
    Case(
        "error:403 AccessDeniedException",
        ("error_access_denied",),
        Expect(error=ProviderAuthFailed, says=("model access", "IAM policy", MODEL), calls=1),
    ),
    Case(
        "error:403 UnrecognizedClientException, InvalidSignatureException, ExpiredTokenException",
        ("error_unrecognized_client",),
        Expect(error=ProviderAuthFailed, says=("UnrecognizedClientException", "credentials"), calls=1),
    ),
    Case(
        "error:404 ResourceNotFoundException",
        ("error_resource_not_found",),
        Expect(error=NotFound, says=("end of its life",), calls=1),
    ),
    Case(
        "error:408 ModelTimeoutException",
        ("error_model_timeout",),
        Expect(error=ProviderTimeout, says=("timed out",), calls=2),
    ),
    Case(
        "error:424 ModelErrorException",
        ("error_model_error",),
        Expect(error=Unavailable, says=("ModelErrorException",), calls=2),
    ),
    Case(
        "error:429 ThrottlingException",
        ("error_throttling",),
        Expect(error=ResourceExhausted, says=("Too many requests",), calls=2),
    ),
    Case(
        "error:429 ModelNotReadyException",
        ("error_model_not_ready",),
        Expect(error=Unavailable, says=("not ready",), calls=2),
    ),
    Case(
        "error:500 InternalServerException",
        ("error_internal",),
        Expect(error=Unavailable, says=("InternalServerException",), calls=2),
    ),
    Case(
        "error:503 ServiceUnavailableException",
        ("error_service_unavailable",),
        Expect(error=Unavailable, says=("unable to process",), calls=2),
    ),
    # In a stream, by :exception-type: the request's fault is final, the rest retried while no
    # token has reached the caller.
    Case(
        "error:stream validationException",
        ("stream_validation",),
        Expect(error=InvalidRequest, says=("validationException", "constraints"), calls=1),
        stream=True,
    ),
    Case(
        "error:stream throttlingException",
        ("stream_throttling",),
        Expect(error=ResourceExhausted, says=("throttlingException", "Too many requests"), calls=2),
        stream=True,
    ),
    Case(
        "error:stream internalServerException",
        ("stream_internal", "stream_text"),
        Expect(text=" Title: The", finish=FinishReason.LENGTH, calls=2),
        stream=True,
    ),
    Case(
        "error:stream serviceUnavailableException",
        ("stream_service_unavailable",),
        Expect(error=Unavailable, says=("serviceUnavailableException", "boom"), calls=2),
        stream=True,
    ),
    Case(
        "error:stream modelStreamErrorException",
        ("stream_model_stream_error",),
        Expect(text=" Title", error=Unavailable, says=("modelStreamErrorException",), calls=1),
        stream=True,
    ),
    Case(
        "error:stream modelTimeoutException",
        ("stream_model_timeout",),
        Expect(error=ProviderTimeout, says=("modelTimeoutException", "timed out"), calls=2),
        stream=True,
    ),
    Case(
        "error:stream error message",
        ("stream_error_frame",),
        Expect(error=Unavailable, says=("code: message",), calls=2),
        stream=True,
    ),
    # --- Bedrock's own: a history of tool turns with no tools offered this turn ---
    Case(
        "tool_history",
        ("converse_after_tool",),
        Expect(text="The most popular song on WZPZ is Elemental Hotel by 8 Storey Hike.", calls=1),
        request=AFTER_TOOLS,
        sent=_history_tool_declared,
    ),
    Case(
        "tool_history",
        ("stream_text",),
        Expect(text=" Title: The", calls=1),
        stream=True,
        request=AFTER_TOOLS,
        sent=_history_tool_declared,
    ),
)

VENDOR = Vendor(
    kind="aws_bedrock",
    directory=Path(__file__).parent,
    make=make,
    gate=gate,
    cases=CASES,
    model=MODEL,
)
