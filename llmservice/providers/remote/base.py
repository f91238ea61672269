"""What every remote backend shares: a concurrency limit where priorities decide who
waits, retries, and the checks that refuse what a backend cannot honour.

A backend supplies its request bodies (a JSON object for an HTTP backend; whatever its
transport sends, for another) and how to send one (`_call`, `_open_stream`);
`complete` and `stream` take a slot from the backend's scheduler, then retry as
`llmservice.providers.remote.retry` says. Every error leaving them has passed through `redact`
with the backend's `secrets()`: whatever upstream text a backend quoted, no key or
token reaches a caller or a log line.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx

from llmservice.kernel.errors import InvalidRequest, LLMServiceError
from llmservice.kernel.provider import Provider
from llmservice.kernel.redact import redact
from llmservice.kernel.scheduler import Scheduler
from llmservice.kernel.types import Attachment, ChatRequest, Completion, StreamEvent, Tool, ToolCallDelta
from llmservice.providers.remote.http import make_client
from llmservice.providers.remote.retry import RetryPolicy, call_with_retries, stream_with_retries
from llmservice.providers.remote.settings import RemoteSettings

TEXT_TYPES = ("text/", "application/json", "application/xml", "application/yaml")


class RemoteProvider(Provider):
    # Whether the vendor itself takes "at most one tool call" (OpenAI's parallel_tool_calls,
    # Anthropic's disable_parallel_tool_use). Where it does not, a request asking for one
    # call gets the first call the model made, the rest are not passed on.
    one_call_switch = False

    def __init__(self, name: str, settings: RemoteSettings) -> None:
        self.name = name
        self.retry = RetryPolicy(attempts=settings.max_attempts)
        self._scheduler = Scheduler(
            settings.max_concurrency, max_waiting=settings.max_waiting, clock=time.monotonic
        )

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    def counters(self) -> Mapping[str, int]:
        return {"retries": self.retry.taken.count}

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        body = self._stream_body(model, request)
        one_call = self._one_call_only(request)
        with self._redacted():
            async with self.scheduler.slot(request.priority, request.deadline):
                async for event in stream_with_retries(
                    lambda: self._open_stream(body, model), self.retry, deadline=request.deadline
                ):
                    if one_call and isinstance(event, ToolCallDelta) and event.index > 0:
                        continue
                    yield event

    async def complete(self, model: str, request: ChatRequest) -> Completion:
        body = self._complete_body(model, request)
        with self._redacted():
            async with self.scheduler.slot(request.priority, request.deadline):
                completion = await call_with_retries(
                    lambda: self._call(body, model), self.retry, deadline=request.deadline
                )
        if self._one_call_only(request):
            return replace(completion, tool_calls=completion.tool_calls[:1])
        return completion

    def _one_call_only(self, request: ChatRequest) -> bool:
        """A request for at most one tool call, to a vendor that has no such switch."""
        return request.parallel_tool_calls is False and not self.one_call_switch

    def secrets(self) -> list[str]:
        """What no error may show: the backend's keys and tokens."""
        return []

    @contextlib.contextmanager
    def _redacted(self) -> Iterator[None]:
        """The one redaction step every error of this backend passes on its way out."""
        try:
            yield
        except LLMServiceError as exc:
            exc.message = redact(exc.message, self.secrets())
            exc.args = (exc.message,)
            raise

    @abc.abstractmethod
    def _stream_body(self, model: str, request: ChatRequest) -> Any:
        """The upstream request body of a streamed reply."""

    @abc.abstractmethod
    def _complete_body(self, model: str, request: ChatRequest) -> Any:
        """The upstream request body of a whole reply."""

    @abc.abstractmethod
    def _open_stream(self, body: Any, model: str) -> AsyncIterator[StreamEvent]:
        """One streamed upstream call; raises domain errors."""

    @abc.abstractmethod
    async def _call(self, body: Any, model: str) -> Completion:
        """One whole upstream call; raises domain errors."""

    def refuse(self, what: str = "no such parameter", **values: object) -> None:
        """InvalidRequest naming the first of `values` that is set."""
        for field, value in values.items():
            if value is not None:
                raise InvalidRequest(field, f"provider {self.name} has {what}")

    def check_attachments(self, request: ChatRequest, images: Sequence[str] = ()) -> None:
        """Text attachments always; images when their type (or prefix such as "image/") is in `images`."""
        for i, a in enumerate(request.attachments):
            if not (a.mime_type.startswith(TEXT_TYPES) or (images and a.mime_type.startswith(tuple(images)))):
                raise InvalidRequest(
                    f"attachments[{i}].mime_type",
                    f"provider {self.name} cannot read {a.mime_type or 'an untyped'!r} attachments",
                )


class HttpProvider(RemoteProvider):
    """A remote backend spoken over plain HTTP: one httpx client, opened by start, closed by aclose."""

    def __init__(
        self, name: str, settings: RemoteSettings, *, base_url: str = "", headers: Mapping[str, str] = {}
    ) -> None:
        super().__init__(name, settings)
        self._client_settings, self._base_url, self._headers = settings, base_url, dict(headers)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = make_client(self._client_settings, base_url=self._base_url, headers=self._headers)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _ready(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        return self._client


# The schema of a tool the history calls but the request does not offer: any object.
ANY_INPUT = '{"type": "object", "properties": {}, "additionalProperties": true}'


def history_tools(request: ChatRequest) -> tuple[Tool, ...]:
    """The tools the history calls, for a vendor that refuses tool calls and results in a
    request that declares no tools (Anthropic, Bedrock): a summary turn after tool calls
    often offers none. Their own schemas are not known here, so each takes any object."""
    names = dict.fromkeys(c.name for m in request.messages for c in m.tool_calls)
    return tuple(Tool(name, f"{name}, called earlier in this conversation", ANY_INPUT) for name in names)


def attachment_text(a: Attachment, index: int) -> str:
    """A text attachment as it joins a message: under its file name (or number)."""
    return f"[attachment {a.filename or index + 1}]\n{a.data}"


def base64_data(a: Attachment) -> str:
    """An attachment's base64 payload, from plain base64 or a data: URL."""
    return a.data.split(",", 1)[1] if a.data.startswith("data:") else a.data
