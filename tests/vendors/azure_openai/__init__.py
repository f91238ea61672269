"""Azure OpenAI's chat completions against the traffic Azure published, and OpenAI's where
Azure published none.

Azure's own fixtures come from its docs (MicrosoftDocs/azure-ai-docs' content filtering
page: real streams that pass and that the filter blocks, the filter's 400, an annotated
reply) and from its answers as posted in public issues (401, 404s, 429, 500). Azure serves
OpenAI's models with OpenAI's bodies: for tool calls, forced calls, refusals and length the
fixtures are OpenAI's recordings (README.md names each). What Azure refuses before a model
runs (no `api-version`, no `api-key` or an unknown one, a deployment it does not have,
`max_tokens` to a reasoning model's deployment) is in `rules`, which the scripted fake
applies too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.responses import Response

from llmservice.kernel.errors import (
    ContentFiltered,
    NotFound,
    ProviderAuthFailed,
    ResourceExhausted,
    Unavailable,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.types import FinishReason
from llmservice.providers.openai_family.provider import azure_openai_provider
from llmservice.providers.openai_family.settings import AzureOpenAISettings

from ..openai import BANANA, FORCE_NUMBER, SF, THEMES, _caps_with_max_completion_tokens, _forces
from ..replay import Received
from ..suite import ASK_WEATHER, FORCE_WEATHER, Case, Expect, Vendor
from .rules import body_refusal, request_refusal

DIRECTORY = Path(__file__).parent
KEY = "0123456789abcdef0123456789abcdef"  # Azure's keys: 32 hex digits
# The replay's one deployment, named after the model it deploys: a reasoning model, which
# refuses `max_tokens` on Azure as on OpenAI.
DEPLOYMENT = "o3-mini"
API_VERSION = "2024-10-21"


def make(url: str) -> Provider:
    settings = AzureOpenAISettings(
        api_key=SecretStr(KEY), endpoint=url, deployment=DEPLOYMENT, api_version=API_VERSION
    )
    return azure_openai_provider(settings)


def gate(received: Received) -> Response | None:
    """Azure's 404 and 401 for a call it refuses unread, and OpenAI's 400 for a body it refuses."""
    asked = received.path.removeprefix("/openai/deployments/").split("/")[0]
    refused = request_refusal(received.query, received.headers, key=KEY, deployment=DEPLOYMENT, asked=asked)
    if refused is not None or not received.path.endswith("/chat/completions"):
        return refused
    return body_refusal(received.json())


def _sends_the_deployment_as_model(body: Any) -> None:
    assert body["model"] == DEPLOYMENT, body


CASES = (
    Case(
        "text",
        ("text",),
        Expect(
            text="Example model response will be returned ",
            finish=FinishReason.STOP,
            usage=(11, 40, 0),
            calls=1,
        ),
        sent=_sends_the_deployment_as_model,
    ),
    # Its prompt annotations come first, with no choices, and more after the finish.
    Case("stream", ("stream",), Expect(text="Color is a", finish=FinishReason.STOP, calls=1), stream=True),
    Case(
        "tools",
        ("tools",),
        Expect(
            finish=FinishReason.TOOL_CALLS,
            tool_calls=(
                ("call_CUdUoJpsWWVdxXntucvnol1M", "get_weather", {"city": "San Francisco", "state": "CA"}),
            ),
        ),
        request=ASK_WEATHER,
    ),
    Case(
        "tools_stream", ("tools_stream",), Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SF), stream=True
    ),
    Case(
        "forced_tool",
        ("forced_tool",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=BANANA),
        request=FORCE_NUMBER,
        sent=_forces("get_number_for_word"),
    ),
    Case(
        "forced_tool",
        ("forced_tool_stream",),
        Expect(finish=FinishReason.TOOL_CALLS, tool_calls=SF),
        stream=True,
        request=FORCE_WEATHER,
        sent=_forces("get_weather"),
    ),
    # Azure's content filter refuses a prompt with a 400 that names what it filtered...
    Case(
        "refusal",
        ("error_400_content_filter",),
        Expect(error=ContentFiltered, says=("hate (high)", "self-harm (high)", "violence (medium)"), calls=1),
    ),
    # ...and stops a stream whose completion it filters, with finish_reason content_filter.
    Case(
        "refusal",
        ("content_filter_stream",),
        Expect(text="Hey Jude, better", finish=FinishReason.CONTENT_FILTER, calls=1),
        stream=True,
    ),
    # The model's own refusal, as OpenAI's.
    Case(
        "refusal",
        ("refusal",),
        Expect(text="I'm very sorry, but I can't assist with that.", finish=FinishReason.CONTENT_FILTER),
    ),
    Case(
        "refusal",
        ("refusal_stream",),
        Expect(text="I'm sorry, I can't assist with that request.", finish=FinishReason.CONTENT_FILTER),
        stream=True,
    ),
    Case(
        "usage",
        ("reasoning",),
        Expect(finish=FinishReason.STOP, usage=(34, 863, 0), calls=1),
        request=THEMES,
        sent=_caps_with_max_completion_tokens,
    ),
    Case(
        "cut_stream",
        ("cut_stream",),
        Expect(text="Color is", error=Unavailable, says=("midway",), calls=1),
        stream=True,
    ),
    Case("finish:stop", ("text",), Expect(finish=FinishReason.STOP)),
    Case("finish:length", ("length",), Expect(text='{"', finish=FinishReason.LENGTH)),
    Case("finish:length", ("length_stream",), Expect(text='{"', finish=FinishReason.LENGTH), stream=True),
    Case("finish:tool_calls", ("tools_stream",), Expect(finish=FinishReason.TOOL_CALLS), stream=True),
    Case("finish:content_filter", ("content_filter",), Expect(text="", finish=FinishReason.CONTENT_FILTER)),
    Case(
        "finish:content_filter",
        ("content_filter_stream",),
        Expect(finish=FinishReason.CONTENT_FILTER),
        stream=True,
    ),
    Case(
        "error:400 content_filter",
        ("error_400_content_filter",),
        Expect(error=ContentFiltered, says=("content filter refused the prompt", "hate (high)"), calls=1),
        stream=True,
    ),
    Case(
        "error:401",
        ("error_401",),
        Expect(error=ProviderAuthFailed, says=("rejected the service's credentials",), calls=1),
    ),
    Case(
        "error:404 DeploymentNotFound",
        ("error_404_deployment",),
        Expect(error=NotFound, says=("The API deployment for this resource does not exist",), calls=1),
    ),
    Case(
        "error:404 Resource not found",
        ("error_404_resource",),
        Expect(error=NotFound, says=("Resource not found",), calls=1),
    ),
    Case(  # its Retry-After is a day: over the policy's 30 s, so it is not waited for
        "error:429",
        ("error_429", "text"),
        Expect(error=ResourceExhausted, says=("exceeded token rate limit",), retry_after_s=86400.0, calls=1),
    ),
    Case(
        "error:500 server_error",
        ("error_500", "text"),
        Expect(text="Example model response will be returned ", calls=2),
    ),
)

VENDOR = Vendor("azure_openai", DIRECTORY, make, gate, CASES, model=DEPLOYMENT)
