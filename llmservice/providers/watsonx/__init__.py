"""The `watsonx` provider: IBM watsonx.ai chat."""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.providers.watsonx.settings import WatsonxSettings
from llmservice.providers.watsonx.wire import WIRE


def _build(settings: Any, name: str) -> Provider:
    from llmservice.providers.watsonx.provider import WatsonxProvider

    return WatsonxProvider(settings, name)


ENTRIES = (
    ProviderEntry(
        kind="watsonx",
        title="IBM watsonx.ai chat",
        settings=WatsonxSettings,
        factory=_build,
        env={
            "WATSONX_APIKEY": "api_key",
            "WATSONX_URL": "url",
            "WATSONX_PROJECT_ID": "project_id",
            "WATSONX_MODEL_ID": "model",
            "WATSONX_TEMPERATURE": "temperature",
        },
        paid=True,
        wire=WIRE,
    ),
)
