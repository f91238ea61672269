"""How Ollama's native API speaks: its done reasons, its errors, how it names models.

One place for what the provider does with Ollama's replies and what docs/providers.md
prints of them (`WIRE`, on the provider's entry), so the two cannot drift. No HTTP here:
the entry imports this module to list the kinds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from llmservice.kernel.provider import FIRST_CALL_ONLY, Wire
from llmservice.kernel.types import FinishReason

# Ollama's done_reason (server/routes.go, llm/server.go). "load" and "unload" end a chat
# that had no messages (Ollama only loaded or unloaded the model): nothing was generated.
FINISH: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "load": FinishReason.STOP,
    "unload": FinishReason.STOP,
}

# What a pull of a model the registry does not have streams after "pulling manifest",
# under HTTP 200; the Ollama CLI tells a missing model by these words too.
PULL_NOT_FOUND = "pull model manifest: file does not exist"

# ParseName's defaults (types/model/name.go): `llama3` is registry.ollama.ai/library/llama3:latest.
_DEFAULT_HOST, _DEFAULT_NAMESPACE, _DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


def finish_reason(done_reason: object, called_tools: bool) -> FinishReason:
    """Ollama has no done reason of its own for tool calls: a reply that made one says "stop".
    A reason it does not document (or none, as older servers send) reads as a stop."""
    return FINISH.get(str(done_reason), FinishReason.STOP).with_tool_calls(called_tools)


def model_key(name: str) -> tuple[str, str, str, str]:
    """A model name as Ollama resolves it, to compare names the way Ollama does: host,
    namespace, model and tag, defaults filled in, case folded (Name.EqualFold)."""
    rest, tag = name, ""
    if rest.rfind(":") > rest.rfind("/"):  # a ':' before the last '/' is a host's port
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else ""
    host = "/".join(parts[:-2]).split("://")[-1]
    return (
        (host or _DEFAULT_HOST).casefold(),
        (namespace or _DEFAULT_NAMESPACE).casefold(),
        model.casefold(),
        (tag or _DEFAULT_TAG).casefold(),
    )


def same_model(a: str, b: str) -> bool:
    """Whether Ollama reads the two names as one model (`llama3` and `llama3:latest` are)."""
    return model_key(a) == model_key(b)


def keep_alive(setting: str) -> str | int:
    """The keep-alive as Ollama takes it: a number of seconds goes as a JSON number, for a
    string Ollama parses as a Go duration, which must name its unit ("3600" is refused)."""
    return int(setting) if re.fullmatch(r"[-+]?\d+", setting.strip()) else setting


WIRE = Wire(
    honoured={
        "sampling.temperature": "`options.temperature` (else the `temperature` setting)",
        "sampling.top_p": "`options.top_p`",
        "sampling.top_k": "`options.top_k`",
        "sampling.min_p": "`options.min_p`",
        "sampling.repetition_penalty": "`options.repeat_penalty`",
        "sampling.frequency_penalty": "`options.frequency_penalty`",
        "sampling.presence_penalty": "`options.presence_penalty`",
        "sampling.seed": "`options.seed`",
        "sampling.stop": "`options.stop`",
        "sampling.max_tokens": "`options.num_predict`",
        "tools": "`tools`, as OpenAI-style function tools",
        "tool_choice": "`none`: no `tools` sent, so the model can call none; `auto`: as Ollama does",
        "parallel_tool_calls": FIRST_CALL_ONLY,
        "messages[].tool_calls": "`tool_calls` with their `id`, arguments as a JSON object",
        "messages[].tool_call_id": "a tool turn's `tool_call_id`, and `tool_name` (the called tool, "
        "found in the history), which Ollama's templates read to match results to calls",
        "response_format": "`format`: `json` for a JSON object, the schema itself for a JSON schema",
        "attachments": "images as base64 in the last user message's `images`; text appended to it",
    },
    refused={
        "tool_choice": "`required` or a named function: Ollama cannot force a tool call",
        "response_format.grammar": "Ollama takes no GBNF grammar",
        "signal_options": "Ollama reports no per-token signals",
        "attachments": "anything but text and images",
    },
    finish=FINISH,
    errors={
        "400 model is required": "INVALID_ARGUMENT, with Ollama's message",
        "400 does not support tools": "INVALID_ARGUMENT, with Ollama's message (the model's template "
        "takes no tools)",
        "404 model not found": 'NOT_FOUND, with Ollama\'s message (`model "x" not found, try pulling it '
        "first`, or `model 'x' not found`)",
        "429 rate limit exceeded": "RESOURCE_EXHAUSTED (cloud models); retried, after its Retry-After if any",
        "500": "UNAVAILABLE, with Ollama's message; retried",
        "503 busy or overloaded": "UNAVAILABLE, with Ollama's message; retried",
        "in-stream error": "UNAVAILABLE (failed midway), with Ollama's message; a stream is not retried "
        "once text has reached the caller",
    },
    unrecorded={
        "refusal": "Ollama has no refusal and no content filter: a model that declines answers in "
        "plain text, done_reason `stop`",
    },
)
