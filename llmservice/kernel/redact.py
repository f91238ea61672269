"""Secrets out of text: what every layer applies before a message leaves it (logs, errors)."""

from __future__ import annotations

from collections.abc import Iterable


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret, and any 8-character run of one, replaced by `***`."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "***")
        for i in range(0, max(len(secret) - 7, 0)):
            fragment = secret[i : i + 8]
            if fragment in text:
                text = text.replace(fragment, "***")
    return text
