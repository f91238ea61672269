"""The provider interface every backend implements, and the entry that declares a provider kind.

A provider kind is one `ProviderEntry`: its name, its settings section, the variables it
documents, whether it bills per token, and a factory. The service's settings, pricing,
registry and docs read the entries (`llmservice.providers.entries`); nothing else names
a kind.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from llmservice.kernel.embedding import EmbedRequest, EmbedResult
from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.scheduler import Scheduler
from llmservice.kernel.settings import ProviderSettings
from llmservice.kernel.types import (
    ChatRequest,
    Completion,
    FinishReason,
    ModelInfo,
    PullProgress,
    StreamEvent,
    TokenDelta,
    ToolCallDelta,
    assemble_tool_calls,
)


class Provider(abc.ABC):
    """A backend that runs models. Owned by the application's lifespan as an async context manager.

    `stream` yields TokenDelta and ToolCallDelta events and ends with exactly one StreamEnd; it raises
    llmservice.kernel.errors types for everything that goes wrong. Closing the iterator early
    (the caller cancelled) must stop the work it started.
    """

    name: str
    # What it honours beyond chat; the core refuses requests that need what it lacks.
    raw_prompts: bool = False  # continues a raw prompt (ChatRequest.raw_prompt), no chat template
    strict_tools: bool = False  # holds each tool call's arguments to its tool's schema

    async def start(self) -> None:  # noqa: B027 -- optional hook: most remote providers need none
        """Make the provider ready to serve (load a model, open clients)."""

    async def aclose(self) -> None:  # noqa: B027 -- optional hook
        """Release everything `start` acquired."""

    @property
    @abc.abstractmethod
    def default_model(self) -> str:
        """The model used when a request names none."""

    @abc.abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models this provider can run now."""

    @abc.abstractmethod
    def validate(self, model: str, request: ChatRequest) -> None:
        """Raise InvalidRequest for anything in `request` that `model` cannot honour."""

    @abc.abstractmethod
    def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """Generate a reply token by token."""

    async def count_tokens(self, model: str, request: ChatRequest) -> int:
        """The prompt's size in `model`'s tokens (the prompt_tokens a reply would report)."""
        raise InvalidRequest("model", f"provider {self.name} cannot count tokens")

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        """One vector per input of `request`, in order; by default, this provider has none."""
        raise InvalidRequest("model", f"provider {self.name} offers no embeddings")

    # Model lifecycle, for operators (ModelAdminService); by default, this provider has none.

    async def load_model(self, model: str, *, make_default: bool = False) -> bool:
        """Load `model` now (with make_default, it serves requests that name no model);
        False when it was loaded already."""
        raise InvalidRequest("provider", f"provider {self.name} does not load or unload models")

    async def unload_model(self, model: str) -> bool:
        """Unload `model` once its running requests end; False when it was not loaded."""
        raise InvalidRequest("provider", f"provider {self.name} does not load or unload models")

    def pull_model(self, source: str, *, sha256: str = "", name: str = "") -> AsyncGenerator[PullProgress]:
        """Fetch a model, reporting progress; the last step's status is "success"."""
        raise InvalidRequest("provider", f"provider {self.name} does not pull models")

    async def delete_model(self, model: str) -> None:
        """Delete a model's files."""
        raise InvalidRequest("provider", f"provider {self.name} does not delete models")

    # What operators see of it (the metrics port).

    @property
    def scheduler(self) -> Scheduler | None:
        """The queue its calls wait in by priority, when it has one."""
        return None

    def health(self) -> bool | None:
        """Whether it can be reached now, for one that watches its connection (a `grpc`
        backend); None for one that is only found out when called."""
        return None

    def gauges(self) -> Iterable[tuple[str, str, Mapping[str, str], float]]:
        """What it measures by itself beyond `counters`: (metric, help, labels, value), the
        provider's name added to the labels (the local engine: where each model runs)."""
        return ()

    def counters(self) -> Mapping[str, int]:
        """What it counts by itself, by name: `preemptions`, `fallbacks`, `retries`, the prompt
        cache's (`llmservice.observability.metrics.PROVIDER_COUNTERS` lists every name)."""
        return {}

    async def complete(self, model: str, request: ChatRequest) -> Completion:
        """Generate a whole reply; by default, the stream collected."""
        parts: list[str] = []
        calls: list[ToolCallDelta] = []
        async with contextlib.aclosing(self.stream(model, request)) as events:
            async for event in events:
                if isinstance(event, TokenDelta):
                    parts.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    calls.append(event)
                else:
                    return Completion(
                        "".join(parts),
                        model,
                        self.name,
                        event.finish_reason,
                        event.usage,
                        assemble_tool_calls(calls),
                    )
        raise RuntimeError(f"provider {self.name} ended a stream without StreamEnd")

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()  # what start opened (an HTTP session, say) is not left to GC
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


ProviderFactory = Callable[[Any, str], Provider]


# How a remote provider without a one-call switch honours `parallel_tool_calls: false`
# (providers.remote.base.RemoteProvider.one_call_switch), in its wire facts.
FIRST_CALL_ONLY = (
    "false: the first tool call the model makes is passed on, any others are not "
    "(the vendor has no such switch)"
)


@dataclass(frozen=True, slots=True)
class Wire:
    """How a remote provider speaks its vendor's API: what it sends, what it refuses, and how
    the vendor's finish reasons and errors read back. docs/providers.md prints it, the
    provider reads its finish reasons from it, and the vendor conformance suite
    (tests/vendors) has a recorded case for every finish reason and error named here."""

    honoured: Mapping[str, str] = field(default_factory=dict)  # request field -> how the vendor gets it
    refused: Mapping[str, str] = field(default_factory=dict)  # request field -> why INVALID_ARGUMENT
    finish: Mapping[str, FinishReason] = field(default_factory=dict)  # vendor finish reason -> ours
    errors: Mapping[str, str] = field(default_factory=dict)  # vendor error -> what the caller gets
    unrecorded: Mapping[str, str] = field(default_factory=dict)  # behaviour -> why it has no recording


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """One provider kind, as its folder declares it.

    `factory(section, name)` builds the provider from its settings section, under the
    name it serves as (the kind itself, or a deployment's name); it imports the
    implementation only then, so listing the kinds loads no SDK and no shared library.
    """

    kind: str  # its settings section, its name in LLM_PROVIDER and in [deployments]
    title: str  # what it talks to, for the docs
    settings: type[ProviderSettings]
    factory: ProviderFactory
    env: Mapping[str, str] = field(default_factory=dict)  # documented variable -> key in its section
    paid: bool = False  # bills per token: left unpriced, start-up warns
    local: bool = False  # runs in-process: built only as the default, never as a deployment
    extra: str = ""  # the pip extra it needs, if any
    wire: Wire | None = None  # a remote provider's wire facts, for the docs and the conformance suite
