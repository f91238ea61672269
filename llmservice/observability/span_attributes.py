"""An LLM call's provider, model and usage as span attributes: ours (llm.*) and OpenTelemetry's
GenAI names (gen_ai.*). No OpenTelemetry import: callers set them on spans they already have."""

from __future__ import annotations

from typing import Any

_NAMES = {
    "provider": ("llm.provider", "gen_ai.provider.name"),
    "model": ("llm.model", "gen_ai.response.model"),
    "prompt_tokens": ("llm.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
    "completion_tokens": ("llm.usage.completion_tokens", "gen_ai.usage.output_tokens"),
    "total_tokens": ("llm.usage.total_tokens",),
    "cached_prompt_tokens": ("llm.usage.cached_prompt_tokens", "gen_ai.usage.cache_read.input_tokens"),
}


def llm_attributes(**values: Any) -> dict[str, Any]:
    """The attributes for `values` named as a reply's fields (provider, model, prompt_tokens,
    completion_tokens, total_tokens, cached_prompt_tokens); unset ones (empty, zero) are left out."""
    return {key: value for name, value in values.items() if value for key in _NAMES[name]}


def attributes_of(reply: Any) -> dict[str, Any]:
    """The same, read from a reply (or a stream's last chunk) that has those fields."""
    return llm_attributes(**{name: getattr(reply, name, None) for name in _NAMES})
