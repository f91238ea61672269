"""Checks every chat request passes, whatever surface it came from; errors name the field."""

from __future__ import annotations

from .errors import InvalidRequest
from .types import ChatRequest

MAX_STOP_SEQUENCES = 16
PRIORITY_RANGE = range(0, 11)
MAX_SIGNAL_TOP_K = 100


def validate(request: ChatRequest) -> None:
    if not request.messages:
        raise InvalidRequest("messages", "no messages, and no user_prompt or system_prompt to use instead")
    s = request.sampling
    if s.temperature is not None and not 0 <= s.temperature <= 2:
        raise InvalidRequest("temperature", f"{s.temperature} is outside [0, 2]")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        raise InvalidRequest("top_p", f"{s.top_p} is outside (0, 1]")
    if s.max_tokens is not None and s.max_tokens < 1:
        raise InvalidRequest(
            "max_tokens", f"{s.max_tokens} is negative; use a positive count, or 0 for the default"
        )
    if len(s.stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            "stop", f"{len(s.stop)} stop sequences; at most {MAX_STOP_SEQUENCES} are allowed"
        )
    for i, stop in enumerate(s.stop):
        if not stop:
            raise InvalidRequest(f"stop[{i}]", "an empty stop sequence would stop before the first token")
    if s.top_k is not None and s.top_k < 0:
        raise InvalidRequest("top_k", f"{s.top_k} is negative; use a positive count, or 0 for off")
    if s.min_p is not None and not 0 <= s.min_p < 1:
        raise InvalidRequest("min_p", f"{s.min_p} is outside [0, 1)")
    if s.repetition_penalty is not None and not 0 < s.repetition_penalty <= 2:
        raise InvalidRequest("repetition_penalty", f"{s.repetition_penalty} is outside (0, 2]")
    if request.signals is not None and not 1 <= request.signals.top_k <= MAX_SIGNAL_TOP_K:
        raise InvalidRequest(
            "signal_options.top_k", f"{request.signals.top_k} is outside 1 .. {MAX_SIGNAL_TOP_K} (0 means 10)"
        )
    if request.priority not in PRIORITY_RANGE:
        raise InvalidRequest("priority", f"{request.priority} is outside 0 (interactive) .. 10 (background)")
