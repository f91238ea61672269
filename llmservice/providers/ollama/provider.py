"""The `ollama` backend: an Ollama server's native API (chat, tags, pull, keep-alive).

The native API rather than Ollama's OpenAI-compatible one, because only the native one
pulls models with progress and loads or unloads them (`keep_alive`). Spoken with httpx:
the API is newline-delimited JSON, and the official `ollama` client would add a second
HTTP stack and hide the status codes we map. What Ollama's replies mean (done reasons,
the words of a missing pull, how it resolves model names) is in `wire`, which the docs print.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from llmservice.kernel.errors import InvalidRequest, LLMServiceError, NotFound, Unavailable
from llmservice.kernel.types import (
    Capabilities,
    ChatRequest,
    Completion,
    Message,
    ModelInfo,
    PullProgress,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    assemble_tool_calls,
)
from llmservice.providers.ollama import wire
from llmservice.providers.ollama.settings import OllamaSettings
from llmservice.providers.remote import openai_shapes
from llmservice.providers.remote.base import HttpProvider, attachment_text, base64_data
from llmservice.providers.remote.http import raise_for_status, transport_errors, unreadable
from llmservice.providers.remote.http_errors import failed_midway

log = logging.getLogger(__name__)


class OllamaProvider(HttpProvider):
    def __init__(self, settings: OllamaSettings, name: str = "ollama") -> None:
        super().__init__(name, settings, base_url=settings.base_url)
        self._settings = settings
        self._default = settings.model  # an operator may swap it (ModelAdminService)

    @property
    def default_model(self) -> str:
        return self._default

    async def list_models(self) -> list[ModelInfo]:
        names = [self.default_model]
        try:
            async with transport_errors(self.name):
                response = await self._ready().get("/api/tags")
            await raise_for_status(response, self.name, model="")
            with unreadable(self.name, "a model list"):
                names += [
                    m["name"]
                    for m in response.json().get("models", [])
                    if not wire.same_model(m["name"], self.default_model)  # `llama3` is `llama3:latest`
                ]
            loaded = await self.loaded_models()
        except LLMServiceError as exc:
            log.warning("%s: cannot list models: %s", self.name, exc.message)
            loaded = []
        capabilities = Capabilities(streaming=True, tools=True, vision=True)
        return [ModelInfo(n, self.name, loaded=_among(n, loaded), capabilities=capabilities) for n in names]

    def validate(self, model: str, request: ChatRequest) -> None:
        if request.signals is not None:
            raise InvalidRequest("signal_options", f"provider {self.name} reports no token signals")
        if request.constraint is not None and request.constraint.kind == "grammar":
            raise InvalidRequest("response_format.grammar", f"provider {self.name} takes no GBNF grammar")
        if request.tool_choice is not None and request.tool_choice.mode not in ("auto", "none"):
            raise InvalidRequest(
                "tool_choice", f"provider {self.name} takes auto or none only: Ollama cannot force a call"
            )
        self.check_attachments(request, images=("image/",))

    def _stream_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return {**self._body(model, request), "stream": True}

    def _complete_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        return {**self._body(model, request), "stream": False}

    async def _call(self, body: dict[str, Any], model: str) -> Completion:
        async with transport_errors(self.name):
            response = await self._ready().post("/api/chat", json=body)
        await raise_for_status(response, self.name, model=model)
        with unreadable(self.name):
            data = response.json()
            if "error" in data:
                raise failed_midway(self.name, str(data["error"]))
            message = data.get("message") or {}
            calls = assemble_tool_calls(_tool_call_deltas(message, 0))
            finish = wire.finish_reason(data.get("done_reason"), bool(calls))
            return Completion(message.get("content", ""), model, self.name, finish, _usage(data), calls)

    async def _open_stream(self, body: dict[str, Any], model: str) -> AsyncIterator[StreamEvent]:
        client = self._ready()
        calls = 0
        async with transport_errors(self.name), client.stream("POST", "/api/chat", json=body) as response:
            await raise_for_status(response, self.name, model=model)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                with unreadable(self.name, "a stream"):
                    data = json.loads(line)
                    if "error" in data:
                        raise failed_midway(self.name, str(data["error"]))
                    message = data.get("message") or {}
                    events: list[StreamEvent] = []
                    if message.get("content"):
                        events.append(TokenDelta(message["content"]))
                    events += _tool_call_deltas(message, calls)
                    end = None
                    if data.get("done"):
                        called = bool(calls or message.get("tool_calls"))
                        end = StreamEnd(wire.finish_reason(data.get("done_reason"), called), _usage(data))
                for event in events:
                    calls += isinstance(event, ToolCallDelta)
                    yield event
                if end is not None:
                    yield end
                    return
        raise Unavailable(f"provider {self.name} ended the stream before it finished")

    async def pull(self, model: str) -> AsyncGenerator[PullProgress]:
        """Pull a model into the Ollama server, reporting its progress. Ollama answers a pull
        with 200 before it asks the registry, so its failures (a model the registry does not
        have, say) come as an `error` line of the stream."""
        client = self._ready()
        async with (
            transport_errors(self.name),
            client.stream(
                "POST", "/api/pull", json={"model": model, "stream": True}, timeout=None
            ) as response,
        ):
            await raise_for_status(response, self.name, model=model)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                with unreadable(self.name, "pull progress"):
                    data = json.loads(line)
                    if "error" in data:
                        raise _pull_failed(self.name, model, str(data["error"]))
                    progress = PullProgress(
                        str(data.get("status", "")),
                        str(data.get("digest", "")),
                        int(data.get("total", 0)),
                        int(data.get("completed", 0)),
                    )
                yield replace(progress, model=model) if progress.status == "success" else progress

    # ModelAdminService: Ollama's own pull, keep-alive and delete.

    async def load_model(self, model: str, *, make_default: bool = False) -> bool:
        was_loaded = _among(model, await self.loaded_models())
        await self.load(model)
        if make_default:
            self._default = model
        return not was_loaded

    async def unload_model(self, model: str) -> bool:
        was_loaded = _among(model, await self.loaded_models())
        await self.unload(model)
        return was_loaded

    def pull_model(self, source: str, *, sha256: str = "", name: str = "") -> AsyncGenerator[PullProgress]:
        if sha256 or name:
            raise InvalidRequest(
                "sha256" if sha256 else "name", f"provider {self.name} verifies and names its pulls itself"
            )
        return self.pull(source)

    async def delete_model(self, model: str) -> None:
        async with transport_errors(self.name):
            response = await self._ready().request("DELETE", "/api/delete", json={"model": model})
        await raise_for_status(response, self.name, model=model)

    async def load(self, model: str) -> None:
        """Load a model now and keep it for the configured keep-alive."""
        await self._keep_alive(model, wire.keep_alive(self._settings.keep_alive))

    async def unload(self, model: str) -> None:
        """Unload a model now (keep-alive zero)."""
        await self._keep_alive(model, 0)

    async def loaded_models(self) -> list[str]:
        """The models Ollama has in memory, as it names them (always with a tag: `llama3:latest`)."""
        async with transport_errors(self.name):
            response = await self._ready().get("/api/ps")
        await raise_for_status(response, self.name, model="")
        with unreadable(self.name, "a model list"):
            return [str(m["name"]) for m in response.json().get("models", [])]

    async def _keep_alive(self, model: str, keep_alive: str | int) -> None:
        async with transport_errors(self.name):
            response = await self._ready().post(
                "/api/generate", json={"model": model, "keep_alive": keep_alive}
            )
        await raise_for_status(response, self.name, model=model)

    def _body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        temperature = s.temperature if s.temperature is not None else self._settings.temperature
        options = {
            "temperature": temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": s.min_p,
            "repeat_penalty": s.repetition_penalty,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "seed": s.seed,
            "stop": list(s.stop) or None,
            "num_ctx": self._settings.num_ctx,
            "num_predict": s.max_tokens,
        }
        body: dict[str, Any] = {
            "model": model,
            "messages": _messages(request),
            "options": {k: v for k, v in options.items() if v is not None},
            "keep_alive": wire.keep_alive(self._settings.keep_alive),
        }
        # Ollama has no tool_choice: "none" offers no tools, and the model can call none. Its
        # templates read tool calls and results in the history without a catalogue.
        if request.tools and not request.forbids_tool_calls:
            body["tools"] = openai_shapes.function_tools(request)
        if request.constraint is not None:
            c = request.constraint
            body["format"] = "json" if c.kind == "json_object" else json.loads(c.text)
        return body


def _tool_call_deltas(message: dict[str, Any], first_index: int) -> list[ToolCallDelta]:
    """Ollama sends each tool call whole, arguments as an object and often without an id."""
    deltas = []
    for offset, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        call_id = call.get("id") or f"call_{uuid.uuid4().hex[:12]}"
        arguments = function.get("arguments") or {}
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        deltas.append(ToolCallDelta(first_index + offset, call_id, function.get("name", ""), text))
    return deltas


def _among(model: str, names: list[str]) -> bool:
    """Whether `model` is one of `names`, as Ollama resolves names (no tag means `:latest`)."""
    return any(wire.same_model(model, name) for name in names)


def _pull_failed(provider: str, model: str, error: str) -> LLMServiceError:
    """A pull's in-stream error: NOT_FOUND for a model the registry does not have, in
    Ollama's words; anything else failed midway."""
    if wire.PULL_NOT_FOUND in error:
        return NotFound(f"provider {provider} found no model {model!r} to pull: {error}")
    return failed_midway(provider, f"could not pull {model!r}: {error}")


def _usage(data: dict[str, Any]) -> Usage:
    return Usage(data.get("prompt_eval_count", 0), data.get("eval_count", 0))


def _message(m: Message, called: dict[str, str]) -> dict[str, Any]:
    """One message in Ollama's form. A tool result names its call (`tool_call_id`, matched
    against the calls' `id`) and the tool that was called (`tool_name`): Ollama's templates
    read one or the other to put the result next to its call."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [_tool_call(c, i) for i, c in enumerate(m.tool_calls)]
    if m.role == "tool":
        if tool_name := called.get(m.tool_call_id) or m.name:
            out["tool_name"] = tool_name
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
    return out


def _tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    """A call in the history as Ollama sends its own: its id, and arguments as an object."""
    function = {"index": index, "name": call.name, "arguments": json.loads(call.arguments)}
    return {"id": call.id, "function": function} if call.id else {"function": function}


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    called = {c.id: c.name for m in request.messages for c in m.tool_calls}
    messages = [_message(m, called) for m in request.messages]
    if not request.attachments:
        return messages
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        messages.append({"role": "user", "content": ""})
        last_user = len(messages) - 1
    target = messages[last_user]
    for i, a in enumerate(request.attachments):
        if a.mime_type.startswith("image/"):
            target.setdefault("images", []).append(base64_data(a))
        else:
            target["content"] += "\n\n" + attachment_text(a, i)
    return messages
