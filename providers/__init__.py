"""Provider backends, each behind the `Provider` interface and built by name.

`FACTORIES` is the one place that knows which names exist; the registry builds the
configured ones from settings. Providers never import the HTTP shim.
"""

from __future__ import annotations

from collections.abc import Callable

from llmservice.settings import Settings

from .base import Provider


def _llamacpp(settings: Settings) -> Provider:
    from .llamacpp import LlamaCppProvider  # imported on use: it loads llama.cpp's shared library

    return LlamaCppProvider(settings.llamacpp)


def _openai(settings: Settings) -> Provider:
    from .openai_family import openai_provider

    return openai_provider(settings.openai)


def _azure_openai(settings: Settings) -> Provider:
    from .openai_family import azure_openai_provider

    return azure_openai_provider(settings.azure_openai)


def _openai_compatible(settings: Settings) -> Provider:
    from .openai_family import openai_compatible_provider

    return openai_compatible_provider(settings.openai_compatible)


def _anthropic(settings: Settings) -> Provider:
    from .anthropic import AnthropicProvider

    return AnthropicProvider(settings.anthropic)


def _ollama(settings: Settings) -> Provider:
    from .ollama import OllamaProvider

    return OllamaProvider(settings.ollama)


FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "llamacpp": _llamacpp,
    "openai": _openai,
    "azure_openai": _azure_openai,
    "openai_compatible": _openai_compatible,
    "anthropic": _anthropic,
    "ollama": _ollama,
}

# Remote providers are built when their required settings are present (or when one is
# the default, which then fails naming what is missing); the local engine only as default.
REMOTE = ("openai", "azure_openai", "openai_compatible", "anthropic", "ollama")

__all__ = ["FACTORIES", "REMOTE", "Provider"]
