"""A server that speaks OpenAI's API (`openai_compatible`), against OpenAI's own recordings.

vLLM, llama.cpp, LM Studio, TGI and OpenRouter are programs, not vendors that publish
traffic; what they answer is OpenAI's wire, so OpenAI's recorded cases are replayed to
this kind too (tests/vendors/openai, its fixtures and gate). Two cases differ: this kind
sends the token limit as `max_tokens`, the name every such server reads, so the cases that
ask a reasoning model (which OpenAI refuses `max_tokens`) are not replayed, and one checks
the old name instead. A real llama.cpp server answers tests/integration/test_openai_compatible.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from llmservice.kernel.provider import Provider
from llmservice.kernel.types import FinishReason
from llmservice.providers.openai_family.provider import openai_compatible_provider
from llmservice.providers.openai_family.settings import OpenAICompatibleSettings

from ..openai import CASES, DIRECTORY, KEY, MODEL, REASONING, THEMES, gate
from ..suite import Case, Expect, Vendor


def make(url: str) -> Provider:
    return openai_compatible_provider(
        OpenAICompatibleSettings(api_key=SecretStr(KEY), base_url=url + "/v1", model=MODEL)
    )


def _caps_with_max_tokens(body: Any) -> None:
    """The token cap goes as `max_tokens`, which every OpenAI-compatible server reads."""
    assert body["max_tokens"] == 2148, body
    assert "max_completion_tokens" not in body, body


VENDOR = Vendor(
    "openai_compatible",
    DIRECTORY,
    make,
    gate,
    (
        *(c for c in CASES if c.model != REASONING),
        Case(
            "usage",
            ("reasoning",),
            Expect(finish=FinishReason.STOP, usage=(34, 863, 0), calls=1),
            request=THEMES,
            sent=_caps_with_max_tokens,
        ),
    ),
    model=MODEL,
)
