"""The wire facts the providers read their vendors' names from."""

from __future__ import annotations

import pytest

from llmservice.providers.openai_family.wire import azure_max_tokens_field


@pytest.mark.parametrize(
    ("api_version", "field"),
    [
        ("2024-10-21", "max_completion_tokens"),
        ("2024-09-01-preview", "max_completion_tokens"),
        ("2025-04-01-preview", "max_completion_tokens"),
        ("v1", "max_completion_tokens"),
        ("preview", "max_completion_tokens"),
        ("2024-08-01-preview", "max_tokens"),  # refuses the new name: "Unrecognized request argument"
        ("2024-06-01", "max_tokens"),
        ("2024-02-01", "max_tokens"),
    ],
)
def test_azure_gets_the_token_limit_under_the_name_its_api_version_reads(
    api_version: str, field: str
) -> None:
    assert azure_max_tokens_field(api_version) == field


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("max_tokens", "length"), ("eos_token", "stop"), ("stop_sequence", "stop"), ("time_limit", "length")],
)
def test_watsonx_reads_the_text_apis_stop_reasons_too(reason: str, finish: str) -> None:
    """Older and on-premises watsonx releases send them in chat replies: a reply cut short by
    its token limit must not pass as a finished one."""
    from llmservice.providers.watsonx.provider import _finish

    assert _finish("watsonx", reason, has_tool_calls=False) == finish
