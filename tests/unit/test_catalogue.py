"""The MCP server catalogue: settings checked at start-up, probes reused until stale."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmservice.service.sessions.catalogue import ServerCatalogue
from llmservice.service.settings import LLMChatSettings

from ..servers import free_port


def test_a_stdio_entry_must_name_a_configured_command() -> None:
    with pytest.raises(ValidationError, match=r"servers\.clock\.url: stdio server 'time' is not in"):
        LLMChatSettings.model_validate({"servers": {"clock": {"url": "time", "transport": "stdio"}}})


def test_unknown_keys_in_an_entry_are_refused() -> None:
    with pytest.raises(ValidationError, match="colour"):
        LLMChatSettings.model_validate({"servers": {"x": {"url": "http://127.0.0.1:1/mcp", "colour": "red"}}})


async def test_probes_are_reused_until_stale_or_refreshed() -> None:
    now = [100.0]
    settings = LLMChatSettings.model_validate(
        {
            "allowed_hosts": ["127.0.0.1"],
            "probe_ttl_s": 30,
            "servers": {"gone": {"url": f"http://127.0.0.1:{free_port()}/mcp", "description": "nobody"}},
        }
    )
    catalogue = ServerCatalogue(settings, clock=lambda: now[0])
    first = await catalogue.entries()
    [entry] = first
    assert (entry.name, entry.status, entry.description) == ("gone", "unreachable", "nobody")
    assert "unreachable" in entry.error
    assert await catalogue.entries() is first  # within probe_ttl_s: the same probe
    assert await catalogue.entries(refresh=True) is not first
    now[0] += 31
    assert await catalogue.entries() is not first


async def test_a_denied_url_is_reported_not_probed() -> None:
    settings = LLMChatSettings.model_validate({"servers": {"meta": {"url": "http://169.254.169.254/mcp"}}})
    [entry] = await ServerCatalogue(settings).entries()
    assert entry.status == "unreachable"
    assert "metadata" in entry.error
