"""The `llamacpp` provider: llama.cpp in-process, serving the bundled model out of the box.

This module is the provider's entry; `provider` holds the provider itself, which loads
llama.cpp's shared library, so it is imported only when the service builds one.
"""

from __future__ import annotations

from typing import Any

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.providers.llamacpp.settings import LlamaCppSettings


def _build(settings: Any, name: str) -> Provider:
    from llmservice.providers.llamacpp.provider import LlamaCppProvider

    return LlamaCppProvider(settings)


ENTRIES = (
    ProviderEntry(
        kind="llamacpp",
        title="the in-process engine (llama.cpp)",
        settings=LlamaCppSettings,
        factory=_build,
        local=True,
    ),
)
