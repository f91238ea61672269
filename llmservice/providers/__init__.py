"""Provider backends, each behind the `Provider` interface and built by name.

`FACTORIES` is the one place that knows which kinds exist: each builds a provider from
its settings section and the name it serves under (the kind itself, or a deployment's
name from llm.toml). The registry decides which to build. Providers never import the
HTTP shim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmservice.kernel.provider import Provider
from llmservice.service.settings import SettingsError


def _llamacpp(settings: Any, name: str) -> Provider:
    from llmservice.providers.llamacpp import (
        LlamaCppProvider,  # imported on use: it loads llama.cpp's shared library
    )

    return LlamaCppProvider(settings)


def _openai(settings: Any, name: str) -> Provider:
    from llmservice.providers.openai_family import openai_provider

    return openai_provider(settings, name)


def _azure_openai(settings: Any, name: str) -> Provider:
    from llmservice.providers.openai_family import azure_openai_provider

    return azure_openai_provider(settings, name)


def _openai_compatible(settings: Any, name: str) -> Provider:
    from llmservice.providers.openai_family import openai_compatible_provider

    return openai_compatible_provider(settings, name)


def _anthropic(settings: Any, name: str) -> Provider:
    from llmservice.providers.anthropic import AnthropicProvider

    return AnthropicProvider(settings, name)


def _ollama(settings: Any, name: str) -> Provider:
    from llmservice.providers.ollama import OllamaProvider

    return OllamaProvider(settings, name)


def _watsonx(settings: Any, name: str) -> Provider:
    from llmservice.providers.watsonx import WatsonxProvider

    return WatsonxProvider(settings, name)


def _aws_bedrock(settings: Any, name: str) -> Provider:
    try:
        from llmservice.providers.bedrock import BedrockProvider
    except ImportError as exc:  # botocore comes with the optional extra
        raise SettingsError(
            f"provider aws_bedrock needs the bedrock extra: pip install 'llmservice[bedrock]' ({exc})"
        ) from None

    return BedrockProvider(settings, name)


FACTORIES: dict[str, Callable[[Any, str], Provider]] = {
    "llamacpp": _llamacpp,
    "openai": _openai,
    "azure_openai": _azure_openai,
    "openai_compatible": _openai_compatible,
    "anthropic": _anthropic,
    "ollama": _ollama,
    "watsonx": _watsonx,
    "aws_bedrock": _aws_bedrock,
}

# Remote providers are built when their required settings are present (or when one is
# the default, which then fails naming what is missing); the local engine only as default.
REMOTE = ("openai", "azure_openai", "openai_compatible", "anthropic", "ollama", "watsonx", "aws_bedrock")

__all__ = ["FACTORIES", "REMOTE", "Provider"]
