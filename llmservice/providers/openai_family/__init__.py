"""The OpenAI family: `openai`, `azure_openai` and `openai_compatible` (vLLM, LM Studio,
HF TGI, OpenRouter, llama.cpp's server), all through the official OpenAI client."""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.providers.openai_family.settings import (
    AzureOpenAISettings,
    OpenAICompatibleSettings,
    OpenAISettings,
)
from llmservice.providers.openai_family.wire import AZURE_OPENAI_WIRE, OPENAI_COMPATIBLE_WIRE, OPENAI_WIRE


def _openai(settings: Any, name: str) -> Provider:
    from llmservice.providers.openai_family.provider import openai_provider

    return openai_provider(settings, name)


def _azure_openai(settings: Any, name: str) -> Provider:
    from llmservice.providers.openai_family.provider import azure_openai_provider

    return azure_openai_provider(settings, name)


def _openai_compatible(settings: Any, name: str) -> Provider:
    from llmservice.providers.openai_family.provider import openai_compatible_provider

    return openai_compatible_provider(settings, name)


ENTRIES = (
    ProviderEntry(
        kind="openai",
        title="OpenAI",
        settings=OpenAISettings,
        factory=_openai,
        env={
            "OPENAI_API_KEY": "api_key",
            "OPENAI_MODEL": "model",
            "OPENAI_BASE_URL": "base_url",
            "OPENAI_TEMPERATURE": "temperature",
        },
        paid=True,
        wire=OPENAI_WIRE,
    ),
    ProviderEntry(
        kind="azure_openai",
        title="Azure OpenAI",
        settings=AzureOpenAISettings,
        factory=_azure_openai,
        env={
            "AZURE_OPENAI_API_KEY": "api_key",
            "AZURE_OPENAI_ENDPOINT": "endpoint",
            "AZURE_OPENAI_DEPLOYMENT": "deployment",
            "AZURE_OPENAI_API_VERSION": "api_version",
            "AZURE_OPENAI_TEMPERATURE": "temperature",
        },
        paid=True,
        wire=AZURE_OPENAI_WIRE,
    ),
    ProviderEntry(
        kind="openai_compatible",
        title="vLLM, LM Studio, HF TGI, OpenRouter, llama.cpp's server",
        settings=OpenAICompatibleSettings,
        factory=_openai_compatible,
        wire=OPENAI_COMPATIBLE_WIRE,
    ),
)
