"""What a request costs: prices per million tokens by "provider/model", and token estimates.

Prices come from `[pricing]` in llm.toml, keyed by fnmatch patterns over
"provider/model" (the provider as the registry names it: a kind such as `openai`, or a
deployment's name); the most specific (longest) matching pattern wins. An unpriced
model costs 0. Estimates are deliberately rough (about four characters a token): they
only bound what a request may spend before its real usage is known.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ChatRequest, Usage
from llmservice.providers import entries
from llmservice.service.settings import PriceSettings, Settings

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators around each message
ATTACHMENT_TOKENS = 512  # an image or file, whatever its size in base64


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, usage: Usage) -> float:
        """USD for `usage`."""
        return (
            usage.prompt_tokens * self.input_per_mtok + usage.completion_tokens * self.output_per_mtok
        ) / 1e6

    @property
    def free(self) -> bool:
        return self.input_per_mtok == 0 and self.output_per_mtok == 0


FREE = Price()


class PriceBook:
    """Prices by "provider/model" pattern."""

    def __init__(self, prices: Mapping[str, PriceSettings | Price]) -> None:
        for pattern in prices:
            if "/" not in pattern:
                raise SettingsError(
                    f'pricing.{pattern}: key as "provider/model" (patterns allowed: "openai/*")'
                )
        # longest pattern first: "openai/gpt-4o-mini" wins over "openai/*"
        self._prices = sorted(
            ((p, Price(v.input_per_mtok, v.output_per_mtok)) for p, v in prices.items()),
            key=lambda item: -len(item[0]),
        )

    def price(self, provider: str, model: str) -> Price | None:
        """The price of `model` on `provider`; None when no pattern matches."""
        name = f"{provider}/{model}"
        return next((price for pattern, price in self._prices if fnmatch.fnmatchcase(name, pattern)), None)

    def cost(self, provider: str, model: str, usage: Usage) -> float:
        return (self.price(provider, model) or FREE).cost(usage)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Prompt tokens of `request`, roughly: text and tool definitions at ~4 characters a token."""
    chars = sum(
        len(m.content) + len(m.name) + sum(len(c.arguments) + len(c.name) for c in m.tool_calls)
        for m in request.messages
    )
    chars += sum(len(t.name) + len(t.description) + len(t.parameters) for t in request.tools)
    return (
        math.ceil(chars / CHARS_PER_TOKEN)
        + MESSAGE_OVERHEAD_TOKENS * len(request.messages)
        + ATTACHMENT_TOKENS * len(request.attachments)
    )


def estimate_text_tokens(texts: tuple[str, ...]) -> int:
    """Tokens of embedding inputs, roughly."""
    return sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts)


def estimate(request: ChatRequest, default_max_tokens: int) -> Usage:
    """The most a request is expected to use: its prompt, and its max_tokens (or the default cap)."""
    completion = request.sampling.max_tokens or default_max_tokens
    return Usage(estimate_prompt_tokens(request), completion)


def unpriced(settings: Settings, book: PriceBook) -> Iterator[str]:
    """A warning for each configured paid provider whose default model has no price, or price 0."""
    for name, kind, model in _paid_providers(settings):
        price = book.price(name, model)
        if price is None or price.free:
            state = "no price" if price is None else "price 0"
            yield (
                f"provider {name} ({kind}) bills per token but {name}/{model} has {state}: "
                f'its usage counts as $0 against budgets; set [pricing."{name}/{model}"]'
            )


def _paid_providers(settings: Settings) -> Iterator[tuple[str, str, str]]:
    """(name, kind, default model) of each paid provider the registry would build."""
    paid = [kind for kind, entry in entries().items() if entry.paid]  # a warning names any left unpriced
    for kind in paid:
        section = settings.section(kind)
        if not section.missing():
            yield kind, kind, _default_model(section)
    for name, deployment in settings.deployments.items():
        if deployment.provider in paid:
            yield name, deployment.provider, _default_model(deployment)


def _default_model(section: object) -> str:
    """Azure names its model by deployment; the others by model."""
    return str(getattr(section, "model", "") or getattr(section, "deployment", ""))
