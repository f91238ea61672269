"""Domain types: what core code and providers see, whatever surface a request came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np
import numpy.typing as npt

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
DEFAULT_SIGNAL_TOP_K = 10
NO_PARAMETERS = '{"type": "object", "properties": {}}'  # the schema of a tool that takes nothing


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made; `arguments` is a JSON object in text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns: the tools it called
    tool_call_id: str = ""  # tool turns: the call this is the result of
    name: str = ""  # the participant's name, telling apart speakers of one role


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema (of an object) in text."""

    name: str
    description: str = ""
    parameters: str = NO_PARAMETERS
    strict: bool = False  # a call's arguments must be valid against `parameters`


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str = ""  # with mode "function": the tool that must be called


@dataclass(frozen=True, slots=True)
class Attachment:
    mime_type: str
    data: str
    filename: str = ""


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters; None means "the deployment's default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    # OpenAI's penalties, in [-2, 2]: by how often, or whether, a token is in the output so far.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class SignalOptions:
    """Asks for per-token signals; confidence, entropy, top_gap and top_k always come."""

    top_k: int = DEFAULT_SIGNAL_TOP_K
    sampler_stages: bool = False
    full_distribution: bool = False


@dataclass(frozen=True, slots=True)
class Constraint:
    """What the output must be: valid against a JSON schema, any JSON object, or a GBNF grammar."""

    kind: Literal["json_schema", "json_object", "grammar"]
    text: str = ""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    model: str = ""
    provider: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    attachments: tuple[Attachment, ...] = ()
    priority: int = 0
    signals: SignalOptions | None = None
    constraint: Constraint | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    deadline: float | None = None  # time.monotonic() by which the caller gives up
    user: str = ""  # the caller's end user (opaque id), for abuse monitoring upstream
    # Prompt-cache partitions: a cached prompt prefix is reused only by requests that share
    # both. `cache_salt` is the caller's own (vLLM's name for it); `principal` is who is
    # authenticated, set by the core before a provider sees the request, never by a caller,
    # so that one principal's prompts cannot be probed through another's cache hits.
    cache_salt: str = ""
    principal: str = ""
    parallel_tool_calls: bool | None = None  # False: at most one tool call per reply
    # The legacy completions API: text continued as it is, with no chat template. When set,
    # `messages` is empty.
    raw_prompt: str | None = None

    @property
    def forbids_tool_calls(self) -> bool:
        """tool_choice "none": the tools may be offered (a history of tool turns reads
        them) but the reply must not call one."""
        return self.tool_choice is not None and self.tool_choice.mode == "none"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"

    def with_tool_calls(self, called_tools: bool) -> FinishReason:
        """The finish of a reply, given whether it holds tool calls: one that holds them and
        says it stopped asks for their results, TOOL_CALLS (vendors say `stop` when a forced
        tool_choice made the call; Ollama always does). One cut short or filtered keeps its
        reason, which the caller must still hear of."""
        return FinishReason.TOOL_CALLS if called_tools and self is FinishReason.STOP else self


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0  # every prompt token, cached ones included
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a prompt cache: part of prompt_tokens
    # The max_tokens the provider applied when lower than the one asked (the local engine:
    # the context left after the prompt); 0: as asked.
    max_tokens_capped_to: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    text: str
    prob: float


@dataclass(frozen=True, slots=True)
class SamplerStage:
    """The candidates left after one sampler stage: how many, and their renormalised distribution."""

    name: str
    active_count: int
    top1_prob: float
    entropy: float  # bits
    top: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class TokenSignal:
    """How the token was chosen; every probability is of the raw (pre-sampler) distribution."""

    confidence: float
    entropy: float  # bits
    top_gap: float
    top_k: tuple[Candidate, ...]
    full_distribution: npt.NDArray[np.float32] | None = None  # vocabulary-size
    stages: tuple[SamplerStage, ...] = ()
    # "engine": from the full raw distribution, all exact. "upstream_logprobs": from a
    # provider's top logprobs; entropy then covers the top-k only (a lower bound).
    source: Literal["engine", "upstream_logprobs"] = "engine"


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """One generated token; `text` is empty while a multi-byte character is incomplete."""

    text: str
    token_id: int = -1
    signal: TokenSignal | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streaming tool call: the first piece of call `index` has its id and name."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of every successful stream."""

    finish_reason: FinishReason
    usage: Usage
    provider: str = ""  # who served it, when not the provider the request went to (a route's deployment)


StreamEvent = TokenDelta | ToolCallDelta | StreamEnd


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    provider: str
    finish_reason: FinishReason
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


def assemble_tool_calls(deltas: list[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """Whole tool calls from their streamed pieces, in index order."""
    calls: dict[int, list[str]] = {}
    for d in deltas:
        call = calls.setdefault(d.index, ["", "", ""])
        call[0] = call[0] or d.id
        call[1] = call[1] or d.name
        call[2] += d.arguments
    return tuple(ToolCall(i, n, a or "{}") for _, (i, n, a) in sorted(calls.items()))


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One step of a pull: a status line, and bytes done of `total` (0: not known) when downloading."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
    model: str = ""  # on the last step: the id the pulled model is served under


@dataclass(frozen=True, slots=True)
class Capabilities:
    streaming: bool = True
    tools: bool = False
    vision: bool = False
    embeddings: bool = False
    signals: bool = False
    completion_only: bool = False  # no chat format: the model only completes text


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    provider: str
    context_length: int = 0
    is_default: bool = False
    loaded: bool = True
    capabilities: Capabilities = field(default_factory=Capabilities)
    quantization: str = ""  # e.g. Q4_K_M; empty when unknown
    size_bytes: int = 0  # the model file on disk; 0 when unknown
    device: str = ""  # a loaded local model's: "CPU" or a GPU such as "CUDA0"
    gpu_layers: int = 0  # of a loaded local model: layers offloaded, and layers in all
    layers: int = 0
    batch_invariant: bool = False  # a seeded reply is the same alone or beside others
