"""Checks every chat request passes, whatever surface it came from; errors name the field."""

from __future__ import annotations

import json
import re

from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.types import ChatRequest

MAX_STOP_SEQUENCES = 16
PRIORITY_RANGE = range(0, 11)
MAX_SIGNAL_TOP_K = 100
MAX_CACHE_SALT = 256  # characters: a partition name, not a place to put a prompt
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate(request: ChatRequest) -> None:
    if request.raw_prompt is not None:
        _validate_raw_prompt(request)
    elif not request.messages:
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
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(s, name)
        if value is not None and not -2 <= value <= 2:
            raise InvalidRequest(name, f"{value} is outside [-2, 2]")
    if request.signals is not None and not 1 <= request.signals.top_k <= MAX_SIGNAL_TOP_K:
        raise InvalidRequest(
            "signal_options.top_k", f"{request.signals.top_k} is outside 1 .. {MAX_SIGNAL_TOP_K} (0 means 10)"
        )
    if request.priority not in PRIORITY_RANGE:
        raise InvalidRequest("priority", f"{request.priority} is outside 0 (interactive) .. 10 (background)")
    if len(request.cache_salt) > MAX_CACHE_SALT:
        raise InvalidRequest(
            "cache_salt", f"{len(request.cache_salt)} characters; at most {MAX_CACHE_SALT} are allowed"
        )
    _validate_tools(request)
    _validate_turns(request)


def _validate_raw_prompt(request: ChatRequest) -> None:
    if request.messages:
        raise InvalidRequest("raw_prompt", "a raw prompt comes instead of messages, not with them")
    if not request.raw_prompt:
        raise InvalidRequest("prompt", "is empty: there is nothing to continue")
    if request.tools or request.tool_choice is not None:
        raise InvalidRequest("tools", "a raw prompt has no chat format to call tools in")


def _validate_tools(request: ChatRequest) -> None:
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidRequest(
                f"tools[{i}].name", f"{tool.name!r} is not 1-64 letters, digits, underscores or hyphens"
            )
        if tool.name in names:
            raise InvalidRequest(f"tools[{i}].name", f"{tool.name!r} is defined twice")
        names.add(tool.name)
        try:
            schema = json.loads(tool.parameters)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"tools[{i}].parameters", f"not valid JSON ({exc.msg})") from None
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise InvalidRequest(f"tools[{i}].parameters", "must be the JSON schema of an object")
    choice = request.tool_choice
    if choice is None:
        return
    if choice.mode in ("required", "function") and not request.tools:
        raise InvalidRequest("tool_choice", f"{choice.mode!r} needs tools, and the request has none")
    if choice.mode == "function" and choice.name not in names:
        raise InvalidRequest("tool_choice.name", f"{choice.name!r} is not one of the request's tools")


def _validate_turns(request: ChatRequest) -> None:
    calls: set[str] = set()  # the ids of the tool calls made so far
    for i, message in enumerate(request.messages):
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(f"messages[{i}].tool_call_id", "a tool turn must say which call it answers")
        if message.role == "tool" and message.tool_call_id not in calls:
            raise InvalidRequest(
                f"messages[{i}].tool_call_id",
                f"{message.tool_call_id!r} answers no tool call of an earlier assistant turn",
            )
        calls.update(c.id for c in message.tool_calls)
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(f"messages[{i}].tool_calls", "only assistant turns carry tool calls")
        for j, call in enumerate(message.tool_calls):
            try:
                json.loads(call.arguments)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"messages[{i}].tool_calls[{j}].arguments", f"not valid JSON ({exc.msg})"
                ) from None
