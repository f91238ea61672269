"""What an Ollama server refuses of a request before it runs a model, in its own words.

One copy, for the replay gate (`tests/vendors/ollama`) and the scripted fake
(`tests/fakes/ollama_server.py`). From ollama/ollama's server/routes.go: ChatHandler
answers a request without a model 400 `model is required` (its tests record the body);
every handler binds `keep_alive` as an api.Duration (api/types.go), which reads a number
as seconds and a string with Go's time.ParseDuration, so "3600" or "5 minutes" is a 400
with Go's own error text.
"""

from __future__ import annotations

import re
from typing import Any

# The paths that take a model and a keep-alive, as ChatHandler and GenerateHandler read them.
_KEEP_ALIVE_PATHS = ("/api/chat", "/api/generate")
_GO_UNITS = ("ns", "us", "µs", "μs", "ms", "s", "m", "h")  # time.ParseDuration's unitMap
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)")


def refusal(path: str, body: Any) -> tuple[int, str] | None:
    """Ollama's status and message for a request it refuses, or None for one it takes."""
    if path not in _KEEP_ALIVE_PATHS or not isinstance(body, dict):
        return None
    if path == "/api/chat" and not body.get("model"):
        return 400, "model is required"
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, str) and (problem := go_duration_error(keep_alive)):
        return 400, problem
    return None


def go_duration_error(text: str) -> str:
    """What Go's time.ParseDuration says of `text`, "" when it parses."""
    rest = text[1:] if text[:1] in "+-" else text
    if rest == "0":
        return ""
    if not rest:
        return f'time: invalid duration "{text}"'
    while rest:
        number = _NUMBER.match(rest)
        if number is None:
            return f'time: invalid duration "{text}"'
        rest = rest[number.end() :]
        unit = re.match(r"[^\d.]*", rest)
        assert unit is not None  # matches the empty string at worst
        if not unit.group():
            return f'time: missing unit in duration "{text}"'
        if unit.group() not in _GO_UNITS:
            return f'time: unknown unit "{unit.group()}" in duration "{text}"'
        rest = rest[unit.end() :]
    return ""
