"""Which MCP servers a session may reach (and which base URLs its own provider settings
may name): the service's URL policy (kernel.url_policy) under llmchat.allowed_hosts.
"""

from __future__ import annotations

from llmservice.kernel import url_policy


class UrlPolicy(url_policy.UrlPolicy):
    """The URL policy of chat sessions: local hosts only as llmchat.allowed_hosts lists them."""

    def __init__(self, allowed_hosts: list[str]) -> None:
        super().__init__(allowed_hosts, setting="llmchat.allowed_hosts")
