"""The JSON shapes of OpenAI's chat API, which several backends share (the OpenAI family,
watsonx's chat, Ollama's tools): tools, turns, and streamed choices back into events."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

from llmservice.kernel.embedding import EmbedResult, as_vector
from llmservice.kernel.types import (
    Candidate,
    ChatRequest,
    Message,
    StreamEvent,
    TokenDelta,
    TokenSignal,
    ToolCallDelta,
    ToolChoice,
    Usage,
)


def function_tools(request: ChatRequest) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters),
                **({"strict": True} if t.strict else {}),
            },
        }
        for t in request.tools
    ]


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    if m.tool_calls:
        return {
            "role": "assistant",
            "content": m.content or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ],
        }
    return {"role": m.role, "content": m.content}


def choice_events(choice: dict[str, Any]) -> list[StreamEvent]:
    """The events in one streamed choice: text (with signals when logprobs came) and tool calls."""
    events: list[StreamEvent] = []
    delta = choice.get("delta") or {}
    entries = (choice.get("logprobs") or {}).get("content") or []
    content = text_of(delta.get("content"))
    if content:
        if len(entries) > 1 and "".join(e["token"] for e in entries) == content:
            events.extend(TokenDelta(e["token"], signal=logprob_signal(e)) for e in entries)
        else:
            events.append(TokenDelta(content, signal=logprob_signal(entries[-1]) if entries else None))
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        events.append(
            ToolCallDelta(
                call.get("index", 0),
                call.get("id") or "",
                function.get("name") or "",
                function.get("arguments") or "",
            )
        )
    return events


def usage(u: dict[str, Any]) -> Usage:
    """A usage object: OpenAI counts cached prompt tokens within prompt_tokens, and says how
    many in prompt_tokens_details (null or missing on servers that keep no prompt cache)."""
    details = u.get("prompt_tokens_details") or {}
    return Usage(
        u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0, details.get("cached_tokens") or 0
    )


def refusal(message: dict[str, Any]) -> str:
    """A message's or delta's `refusal`: the model's words when it declines (OpenAI's safety
    refusals and structured outputs; watsonx documents the field too), sent in place of content."""
    words = message.get("refusal")
    return words if isinstance(words, str) else ""


def text_of(content: str | list[Any] | None) -> str:
    """Message or delta content as text: a string, or an array of parts (some servers send those)."""
    if not content:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
    )


def logprob_signal(entry: dict[str, Any]) -> TokenSignal:
    """What a token's logprob and top logprobs tell: exact where they can, marked as such."""
    top = sorted(entry.get("top_logprobs") or (), key=lambda t: -t["logprob"])
    probs = [math.exp(t["logprob"]) for t in top]
    return TokenSignal(
        confidence=math.exp(entry["logprob"]),
        entropy=-sum(p * math.log2(p) for p in probs if p > 0),  # over the top-k: a lower bound
        top_gap=probs[0] - probs[1] if len(probs) > 1 else (probs[0] if probs else 0.0),
        top_k=tuple(Candidate(-1, t["token"], p) for t, p in zip(top, probs, strict=True)),
        source="upstream_logprobs",
    )


def embeddings(reply: dict[str, Any]) -> EmbedResult:
    """An /embeddings reply, in input order; vectors as floats or as base64 float32."""
    data = sorted(reply["data"], key=lambda d: int(d["index"]))
    vectors = tuple(
        np.frombuffer(base64.b64decode(e), dtype="<f4").astype(np.float32)
        if isinstance(e, str)
        else as_vector(e)
        for e in (d["embedding"] for d in data)
    )
    usage = reply.get("usage") or {}
    return EmbedResult(vectors, int(usage.get("prompt_tokens") or 0))
