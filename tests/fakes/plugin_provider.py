"""A third-party provider, as a package outside llmservice would ship one: a ProviderEntry
registered under the `llmservice.providers` entry point group (tests/unit/test_provider_entries.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmservice.kernel.provider import Provider, ProviderEntry
from llmservice.kernel.settings import ProviderSettings

from .words_provider import Words


class WordsSettings(ProviderSettings):
    words: str = Field("", description="what every reply says, a token a word")
    prompt_tokens: int = 10

    def missing(self) -> list[str]:
        return [] if self.words else ["words"]


def _build(settings: Any, name: str) -> Provider:
    return Words(name, tuple(settings.words.split()), settings.prompt_tokens)


ENTRY = ProviderEntry(
    kind="words",
    title="scripted words (a third-party provider)",
    settings=WordsSettings,
    factory=_build,
    env={"WORDS_LIST": "words"},
    paid=True,
)
