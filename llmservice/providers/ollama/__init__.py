"""The `ollama` provider: an Ollama server's native API."""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.providers.ollama.settings import OllamaSettings
from llmservice.providers.ollama.wire import WIRE


def _build(settings: Any, name: str) -> Provider:
    from llmservice.providers.ollama.provider import OllamaProvider

    return OllamaProvider(settings, name)


ENTRIES = (
    ProviderEntry(
        kind="ollama",
        title="an Ollama server's native API",
        settings=OllamaSettings,
        factory=_build,
        env={"OLLAMA_MODEL": "model", "OLLAMA_BASE_URL": "base_url", "OLLAMA_TEMPERATURE": "temperature"},
        wire=WIRE,
    ),
)
