"""The `anthropic` provider: Anthropic's Messages API."""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.providers.anthropic.settings import AnthropicSettings
from llmservice.providers.anthropic.wire import WIRE


def _build(settings: Any, name: str) -> Provider:
    from llmservice.providers.anthropic.provider import AnthropicProvider

    return AnthropicProvider(settings, name)


ENTRIES = (
    ProviderEntry(
        kind="anthropic",
        title="Anthropic Messages API",
        settings=AnthropicSettings,
        factory=_build,
        env={
            "ANTHROPIC_API_KEY": "api_key",
            "ANTHROPIC_MODEL": "model",
            "ANTHROPIC_TEMPERATURE": "temperature",
            "ANTHROPIC_MAX_TOKENS": "max_tokens",
        },
        paid=True,
        wire=WIRE,
    ),
)
