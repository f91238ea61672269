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


FACTORIES: dict[str, Callable[[Settings], Provider]] = {
    "llamacpp": _llamacpp,
}

__all__ = ["FACTORIES", "Provider"]
