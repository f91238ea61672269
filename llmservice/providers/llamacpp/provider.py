"""The `llamacpp` provider: GGUF models run in-process by the llama.cpp engine, loaded on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from llmservice.kernel.embedding import EmbedRequest, EmbedResult
from llmservice.kernel.errors import InvalidRequest, NotFound
from llmservice.kernel.provider import Provider
from llmservice.kernel.scheduler import Scheduler
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.settings import nested_env_name as env_name
from llmservice.kernel.types import (
    Capabilities,
    ChatRequest,
    FinishReason,
    Message,
    ModelInfo,
    PullProgress,
    StreamEnd,
    StreamEvent,
    TokenDelta,
)
from llmservice.providers.llamacpp import store, tools
from llmservice.providers.llamacpp.constraint import grammar_for
from llmservice.providers.llamacpp.engine import Delivery, Event, Job
from llmservice.providers.llamacpp.gguf_info import has_chat_template
from llmservice.providers.llamacpp.loaded import LoadedModel, open_model
from llmservice.providers.llamacpp.model import LlamaModel
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_ID, bundled_file, bundled_model_path
from llmservice.providers.llamacpp.offload import NOT_LOADED, Offload, can_offload, devices
from llmservice.providers.llamacpp.pool import Clock, ModelPool
from llmservice.providers.llamacpp.prompt import Segment, TemplatePrompt
from llmservice.providers.llamacpp.pulling import pulling
from llmservice.providers.llamacpp.sampling import GrammarError, SamplerConfig, check_grammar
from llmservice.providers.llamacpp.settings import LlamaCppSettings

log = logging.getLogger(__name__)

# Attachments this text-only engine can read: their text joins the last user message.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/yaml")


class LlamaCppProvider(Provider):
    """Serves the configured GGUF (the default model) and every GGUF in llamacpp.cache_dir,
    by file name without .gguf; each is loaded on first use and kept in a ModelPool."""

    name = "llamacpp"
    raw_prompts = True
    strict_tools = True  # every tool call is generated under its tool's schema, as a grammar

    def __init__(self, settings: LlamaCppSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        path = settings.model_path
        self._configured_id = settings.model_id or (path.stem if path else BUNDLED_MODEL_ID)
        self._configured_path = path or bundled_file()
        self._default_id = self._configured_id
        self._slots = settings.n_slots or default_slots()
        # Refused here, at start-up, when the build or the machine cannot honour it.
        gpus = sum(d.gpu for d in devices())
        self._offload = Offload.from_settings(settings, can_offload(), gpus)
        self._quantizations: dict[Path, str] = {}  # learnt at load, shown while unloaded
        self._chat_formats: dict[Path, bool] = {}  # has a chat template: learnt at load or read
        self._spent = _Counters()  # of engines closed since
        self._pool: ModelPool[LoadedModel] = ModelPool(
            self._open,
            self._cost,
            budget=settings.memory_budget_mb << 20,
            idle_s=settings.idle_unload_s,
            clock=clock,
            on_closed=self._spent.add,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._pull_urls = settings.pull_policy()
        self._sinks: dict[asyncio.AbstractEventLoop, _LoopSink] = {}

    @property
    def default_model(self) -> str:
        return self._default_id

    @property
    def pool(self) -> ModelPool[LoadedModel]:
        return self._pool

    async def start(self) -> None:
        await self._pool.load(self._default_id)
        if self._settings.idle_unload_s > 0:
            self._sweeper = asyncio.create_task(self._sweep(self._settings.idle_unload_s))

    async def _sweep(self, idle_s: float) -> None:
        while True:
            await asyncio.sleep(min(max(idle_s / 4, 0.05), 30.0))
            for model_id in self._pool.unload_idle():
                log.info("unloading %s: unused for %g s (llamacpp.idle_unload_s)", model_id, idle_s)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._pool.aclose()

    # Model lifecycle (ModelAdminService).

    async def load_model(self, model: str, *, make_default: bool = False) -> bool:
        """Load `model` now; with make_default, new requests that name no model go to it and
        the previous default unloads once its streams end. False if it was loaded already."""
        fresh = await self._pool.load(model)
        if make_default and model != self._default_id:
            previous, self._default_id = self._default_id, model
            self._pool.unload(previous)
            log.info("default model is now %s (was %s)", model, previous)
        return fresh

    async def unload_model(self, model: str) -> bool:
        self._check_model(model)
        return self._pool.unload(model)

    def pull_model(self, source: str, *, sha256: str = "", name: str = "") -> AsyncGenerator[PullProgress]:
        return pulling(source, self._settings.cache_dir, urls=self._pull_urls, sha256=sha256, name=name)

    async def delete_model(self, model: str) -> None:
        path = self._path(model)
        if path == self._configured_path or model == self._default_id:
            raise InvalidRequest("model", f"model {model!r} is the configured or default model; it stays")
        self._pool.unload(model)
        try:
            store.remove(self._settings.cache_dir, path.name)
        except store.StoreError as exc:
            raise NotFound(str(exc)) from None

    def _catalogue(self) -> dict[str, Path]:
        """Every model this provider can load, by id: the default first."""
        found = {self._configured_id: self._configured_path}
        configured = self._configured_path.resolve()
        for stored in store.list_models(self._settings.cache_dir):
            model_id = stored.path.stem
            if model_id not in found and stored.path.resolve() != configured:
                found[model_id] = stored.path
        if self._default_id in found:
            found = {self._default_id: found.pop(self._default_id), **found}
        return found

    def _path(self, model: str) -> Path:
        if model == self._configured_id:
            return self._configured_path
        catalogue = self._catalogue()
        if model not in catalogue:
            # Neither the other models (a caller may be allowed only some) nor the server's
            # directories are the caller's business: ListModels says what it may use.
            raise NotFound(
                f"model {model!r} is not served by provider {self.name} (ListModels, GET /v1/models, "
                "lists the models you may use; an operator adds GGUF files to llamacpp.cache_dir)"
            )
        return catalogue[model]

    def _cost(self, model: str) -> int:
        path = self._path(model)
        return path.stat().st_size if path.is_file() else 0

    def _open(self, model: str) -> LoadedModel:
        """On a pool thread: load a model, the bundled one assembled first if it must be."""
        s = self._settings
        path = self._path(model)
        if model == self._configured_id and s.model_path is None:
            path = bundled_model_path(s.cache_dir)
        try:
            loaded = open_model(model, path, s, self._slots, self._template_setting(model), self._offload)
        except SettingsError as exc:
            if model == self._configured_id:
                raise
            raise InvalidRequest("model", f"model {model!r}: {exc}") from None
        except ValueError as exc:
            if model == self._configured_id:
                raise SettingsError(
                    f"llamacpp.model_path [env {env_name(('llamacpp', 'model_path'))}]: {exc}"
                ) from None
            raise InvalidRequest("model", f"model {model!r}: {exc}") from None
        self._quantizations[path] = loaded.quantization
        self._chat_formats[path] = loaded.template is not None
        return loaded

    def _template_setting(self, model: str) -> tuple[str, str]:
        """The chat template the settings name for `model` ("": its GGUF's own) and the key that does."""
        if model == self._configured_id:
            key = ("llamacpp", "chat_template")
            return self._settings.chat_template, f"{'.'.join(key)} [env {env_name(key)}]"
        return self._settings.chat_templates.get(model, ""), f"llamacpp.chat_templates.{model}"

    async def list_models(self) -> list[ModelInfo]:
        catalogue = self._catalogue()
        for model_id, path in catalogue.items():
            if path not in self._chat_formats and not self._template_setting(model_id)[0] and path.is_file():
                self._chat_formats[path] = await asyncio.to_thread(has_chat_template, path)
        return [self._info(model_id, path) for model_id, path in catalogue.items()]

    def _info(self, model_id: str, path: Path) -> ModelInfo:
        chat = bool(self._template_setting(model_id)[0]) or self._chat_formats.get(path, True)
        capabilities = Capabilities(
            streaming=True,
            tools=chat,
            signals=True,
            embeddings=self._settings.embeddings.enabled,
            completion_only=not chat,
        )
        where, invariant = NOT_LOADED, False
        with self._pool.peek(model_id) as loaded:
            if loaded is not None:
                n_ctx, quant, size = loaded.engine.n_ctx, loaded.quantization, loaded.size_bytes
                where, invariant = loaded.placement, loaded.batch_invariant
            else:
                n_ctx, quant = self._settings.n_ctx, self._quantizations.get(path, "")
                size = path.stat().st_size if path.is_file() else 0
        return ModelInfo(
            model_id,
            self.name,
            n_ctx,
            loaded=loaded is not None,
            capabilities=capabilities,
            quantization=quant,
            size_bytes=size,
            device=where.device,
            gpu_layers=where.layers_offloaded,
            layers=where.layers,
            batch_invariant=invariant,
        )

    def validate(self, model: str, request: ChatRequest) -> None:
        self._check_model(model)
        with self._pool.peek(model) as loaded:
            if loaded is not None and request.raw_prompt is None:  # else refused once loaded
                _chat_template(loaded, model)
        if request.tools and request.constraint is not None:
            raise InvalidRequest(
                "response_format", "the local engine constrains replies to tool calls already"
            )
        if request.tools and request.signals is not None:
            raise InvalidRequest(
                "signal_options", "with tools the reply is held back whole: no per-token signals"
            )
        for i, attachment in enumerate(request.attachments):
            if not attachment.mime_type.startswith(_TEXT_TYPES):
                raise InvalidRequest(
                    f"attachments[{i}].mime_type",
                    f"model {model} reads text only and cannot use {attachment.mime_type or 'an untyped'!r} "
                    "attachments (text/*, application/json, application/xml, application/yaml are read)",
                )
        if request.constraint is not None or request.tools:
            with self._pool.peek(model) as loaded:
                if loaded is not None:  # else checked once it is loaded, before it runs
                    _check_grammars(loaded.model, request)

    async def count_tokens(self, model: str, request: ChatRequest) -> int:
        """The prompt as `stream` would run it, tool catalogue included."""
        self._check_model(model)
        async with self._pool.use(model) as loaded:
            if request.tools:
                request = tools.with_tools(request)
            else:
                request = replace(request, messages=tools.plain_turns(request.messages, calls_as_json=False))
            return len(_prompt_tokens(loaded, model, request))

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        self._check_model(model)
        async with self._pool.use(model) as loaded:
            return await self._embed(loaded, model, request)

    async def _embed(self, loaded: LoadedModel, model: str, request: EmbedRequest) -> EmbedResult:
        embedder = loaded.embedder
        if embedder is None:
            raise InvalidRequest(
                "model",
                f"provider {self.name} serves no embeddings here (llamacpp.embeddings.enabled is off)",
            )
        if request.dimensions is not None and request.dimensions != embedder.n_embd:
            raise InvalidRequest(
                "dimensions", f"model {model} gives vectors of {embedder.n_embd} dimensions only"
            )
        tokens = [embedder.tokenize(text) for text in request.input]
        for i, t in enumerate(tokens):
            if len(t) > embedder.n_ctx:
                raise InvalidRequest(
                    request.field(i),
                    f"is {len(t)} tokens; model {model} embeds at most {embedder.n_ctx} "
                    "(llamacpp.embeddings.n_ctx)",
                )
        total, limit = sum(map(len, tokens)), self._settings.embeddings.max_request_tokens
        if total > limit:
            raise InvalidRequest(
                "input",
                f"is {total} tokens in all; model {model} embeds at most {limit} per call "
                "(llamacpp.embeddings.max_request_tokens): split it into several calls",
            )
        vectors = await embedder.embed(tokens)
        return EmbedResult(tuple(vectors), sum(map(len, tokens)))

    def _check_model(self, model: str) -> None:
        if model != self._default_id and not self._pool.in_use(model):
            self._path(model)  # NotFound naming what is served

    async def stream(self, model: str, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """The whole stream holds the model: unloading or swapping it lets the stream finish."""
        checked = model in self._pool.loaded()  # validate() checked its grammars then
        asked = request.sampling.max_tokens or self._settings.max_tokens
        async with self._pool.use(model) as loaded:
            if not checked and (request.constraint is not None or request.tools):
                _check_grammars(loaded.model, request)
            if request.tools:
                events = tools.call_tools(
                    lambda r, on_job: self._generate(loaded, model, r, on_job),
                    request,
                    max_tokens=request.sampling.max_tokens or self._settings.max_tokens,
                    call_budget=self._settings.tool_call_max_tokens,
                )
            else:
                plain = replace(
                    request,
                    messages=tools.plain_turns(request.messages, calls_as_json=False),
                    tool_choice=None,
                )
                events = self._generate(loaded, model, plain)
            async with contextlib.aclosing(events) as running:
                async for event in running:
                    if isinstance(event, StreamEnd):
                        event = _capped(event, asked, loaded.engine.n_ctx)
                    yield event

    async def _generate(
        self,
        loaded: LoadedModel,
        model: str,
        request: ChatRequest,
        on_job: Callable[[Job], None] | None = None,  # gets the job before it is submitted
    ) -> AsyncGenerator[StreamEvent]:
        engine, scheduler = loaded.engine, loaded.scheduler
        prompt = _prompt_tokens(loaded, model, request)
        if len(prompt) >= engine.n_ctx:
            raise InvalidRequest(
                "messages",
                f"the prompt is {len(prompt)} tokens; model {model} holds "
                f"{engine.n_ctx} tokens of context, and at least one must be left to answer",
            )
        s = request.sampling
        temperature = self._settings.temperature if s.temperature is None else s.temperature
        events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        job = Job(
            prompt=prompt,
            # no more than the context holds: what is left after the prompt (stream() says so)
            max_tokens=min(s.max_tokens or self._settings.max_tokens, engine.n_ctx - len(prompt)),
            sampler=SamplerConfig(
                temperature=temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=s.min_p,
                repetition_penalty=s.repetition_penalty,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
                seed=s.seed,
                grammar=grammar_for(request.constraint) if request.constraint else None,
            ),
            deliver=lambda event: _unread(events, job, event),
            sink=self._sink_for(loop),
            stop=s.stop,
            priority=request.priority,
            signals=request.signals,
            partition=self._partition(request),
        )
        if on_job is not None:
            on_job(job)
        reply: list[str] = []
        async with scheduler.slot(request.priority, request.deadline):
            engine.submit(job)
            try:
                while True:
                    event = await events.get()
                    if job.reader_behind.is_set() and events.qsize() <= READER_CAUGHT_UP:
                        job.reader_behind.clear()
                        engine.wake()
                    if isinstance(event, BaseException):
                        raise event
                    if isinstance(event, TokenDelta):
                        reply.append(event.text)
                    elif isinstance(event, StreamEnd) and _resendable(event, request):
                        # Before the end goes out: the model is held until then (it may be
                        # unloaded the moment the stream ends), and all the text is out already.
                        self._warm_next_turn(loaded, model, request, "".join(reply), job)
                    yield event
                    if isinstance(event, StreamEnd):
                        return
            finally:
                job.cancel()
                if job.reader_behind.is_set():
                    engine.wake()  # it sleeps while every job waits for its reader: this one is gone

    def _partition(self, request: ChatRequest) -> str:
        """Whose caches a request may reuse: its principal's (or everyone's, if shared), by salt."""
        principal = "" if self._settings.prompt_cache_shared else request.principal
        return f"{principal}\x1f{request.cache_salt}"

    def _warm_next_turn(
        self, loaded: LoadedModel, model: str, request: ChatRequest, reply: str, job: Job
    ) -> None:
        """Have the engine prefill the conversation as the next turn resends it (~1 ms a 300 tokens)."""
        if not loaded.engine.prompt_cache:
            return
        messages = (*request.messages, Message("assistant", reply))  # no attachments: _resendable
        try:
            tokens = _tokenize(loaded, model, messages, generation_prompt=False)
        except InvalidRequest:
            return
        if len(tokens) < loaded.engine.n_ctx:
            loaded.engine.warm(tokens, job.partition)

    # Counters over every engine (the default model's for slots and scheduler), for tests and metrics.

    @property
    def slots(self) -> int:
        with self._pool.peek(self._default_id) as loaded:
            return loaded.engine.n_slots if loaded else 0

    @property
    def scheduler(self) -> Scheduler | None:
        with self._pool.peek(self._default_id) as loaded:
            return loaded.scheduler if loaded else None

    @property
    def preemptions(self) -> int:
        return self._spent.preemptions + sum(m.engine.preemptions for m in self._pool.values())

    @property
    def held_sequences(self) -> int:
        """Jobs in the engines: decoding, paused, evicted or about to start."""
        return sum(m.engine.held for m in self._pool.values())

    @property
    def evictions(self) -> int:
        return self._spent.evictions + sum(m.engine.evictions for m in self._pool.values())

    @property
    def interruptions(self) -> int:
        """Decode steps stopped midway for a more urgent job."""
        return self._spent.interruptions + sum(m.engine.interruptions for m in self._pool.values())

    @property
    def tokens_generated(self) -> int:
        return self._spent.tokens_generated + sum(m.engine.tokens_generated for m in self._pool.values())

    # The prompt cache's counters, over every engine.

    @property
    def prompt_tokens_computed(self) -> int:
        return self._spent.prompt_tokens_computed + self._sum("prompt_tokens_computed")

    @property
    def prompt_tokens_reused(self) -> int:
        return self._spent.prompt_tokens_reused + self._sum("prompt_tokens_reused")

    @property
    def prompt_cache_hits(self) -> int:
        return self._spent.cache_hits + self._sum("cache_hits")

    @property
    def prompt_cache_misses(self) -> int:
        return self._spent.cache_misses + self._sum("cache_misses")

    @property
    def prompt_cache_evictions(self) -> int:
        """Finished caches that left the context: to host memory, or dropped."""
        return self._spent.cache_evictions + self._sum("cache_evictions")

    @property
    def prompt_cache_host_evictions(self) -> int:
        return self._spent.host_evictions + sum(m.engine.host.evictions for m in self._pool.values())

    @property
    def prompt_cache_host_bytes(self) -> int:
        return sum(m.engine.host.bytes for m in self._pool.values())

    @property
    def warm_tokens_computed(self) -> int:
        return self._spent.warm_tokens_computed + self._sum("warm_tokens_computed")

    @property
    def warming(self) -> bool:
        """An engine is prefilling a conversation for its next turn (for tests)."""
        return any(m.engine.warming for m in self._pool.values())

    def counters(self) -> Mapping[str, int]:
        return {name: getattr(self, name) for name in _COUNTERS}

    def gauges(self) -> Iterable[tuple[str, str, Mapping[str, str], float]]:
        for loaded in self._pool.values():
            where = loaded.placement
            labels = {"model": loaded.id, "device": where.device}
            yield "llmservice_model_gpu_layers", _GPU_LAYERS_DOC, labels, where.layers_offloaded
            yield "llmservice_model_layers", _LAYERS_DOC, {"model": loaded.id}, where.layers

    def _sum(self, counter: str) -> int:
        return sum(getattr(m.engine, counter) for m in self._pool.values())

    def _sink_for(self, loop: asyncio.AbstractEventLoop) -> _LoopSink:
        sink = self._sinks.get(loop)
        if sink is None:
            sink = self._sinks[loop] = _LoopSink(loop)
        return sink


_GPU_LAYERS_DOC = "Layers of each loaded model offloaded to a GPU, by the device it runs on (CPU: 0)"
_LAYERS_DOC = "Layers of each loaded model in all (the output layer counted)"
# What `counters` reports: every one a property above.
_COUNTERS = (
    "preemptions",
    "evictions",
    "interruptions",
    "prompt_tokens_computed",
    "prompt_tokens_reused",
    "prompt_cache_hits",
    "prompt_cache_misses",
    "prompt_cache_evictions",
    "prompt_cache_host_evictions",
    "prompt_cache_host_bytes",
    "warm_tokens_computed",
)


@dataclass
class _Counters:
    """What engines that were closed had counted."""

    preemptions: int = 0
    evictions: int = 0
    interruptions: int = 0
    tokens_generated: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_reused: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    warm_tokens_computed: int = 0
    host_evictions: int = 0

    def add(self, closed: LoadedModel) -> None:
        engine = closed.engine
        for name in (
            "preemptions",
            "evictions",
            "interruptions",
            "tokens_generated",
            "prompt_tokens_computed",
            "prompt_tokens_reused",
            "cache_hits",
            "cache_misses",
            "cache_evictions",
            "warm_tokens_computed",
        ):
            setattr(self, name, getattr(self, name) + getattr(engine, name))
        self.host_evictions += engine.host.evictions


def _capped(end: StreamEnd, asked: int, n_ctx: int) -> StreamEnd:
    """`end`, saying so when the context left after the prompt held the reply to fewer
    tokens than the max_tokens asked for."""
    left = n_ctx - end.usage.prompt_tokens
    if asked <= left:
        return end
    return replace(end, usage=replace(end.usage, max_tokens_capped_to=left))


# Events a stream's reader may leave unread before its sequence is paused (and how few
# before it goes on): a reader that stops costs at most this many, ~200 KB each with the
# full distribution, not max_tokens of them; one that reads keeps well below it.
READER_BEHIND = 32
READER_CAUGHT_UP = 8


def _unread(events: asyncio.Queue[Event], job: Job, event: Event) -> None:
    events.put_nowait(event)
    if events.qsize() >= READER_BEHIND:
        job.reader_behind.set()


def _resendable(end: StreamEnd, request: ChatRequest) -> bool:
    """A reply a client sends back as the next turn's history (attachments it would not resend)."""
    return (
        end.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        and not request.attachments
        and request.raw_prompt is None
    )


def _check_grammars(model: LlamaModel, request: ChatRequest) -> None:
    """InvalidRequest when the request's constraint, or its tools' grammar, cannot be enforced."""
    if request.constraint is not None:
        try:
            check_grammar(model, grammar_for(request.constraint))
        except (GrammarError, ValueError) as exc:
            raise InvalidRequest(f"response_format.{request.constraint.kind}", str(exc)) from None
    if request.tools:
        constraint = tools.with_tools(request).constraint
        assert constraint is not None
        try:
            check_grammar(model, grammar_for(constraint))
        except (GrammarError, ValueError) as exc:
            raise InvalidRequest("tools", f"a tool's parameters cannot be enforced: {exc}") from None


def _chat_template(loaded: LoadedModel, model: str) -> TemplatePrompt:
    """The model's chat template; InvalidRequest for a model that only completes text."""
    if loaded.template is None:
        raise InvalidRequest(
            "model",
            f"model {model} has no chat template, so it can only complete text, not chat; the "
            "operator can name one with llamacpp.chat_template (or llamacpp.chat_templates.<model>)",
        )
    return loaded.template


def _tokenize(
    loaded: LoadedModel, model: str, messages: tuple[Message, ...], *, generation_prompt: bool = True
) -> list[int]:
    template = _chat_template(loaded, model)
    try:
        segments = template(messages, generation_prompt=generation_prompt)
    except ValueError as exc:  # the template's own raise_exception: a conversation it refuses
        raise InvalidRequest("messages", str(exc)) from None
    return tokenize_segments(loaded.model, segments)


def _prompt_tokens(loaded: LoadedModel, model: str, request: ChatRequest) -> list[int]:
    """The tokens the model reads: a raw prompt as it is, or the conversation in its chat template."""
    if request.raw_prompt is not None:
        return tokenize_segments(loaded.model, [Segment(request.raw_prompt)])
    return _tokenize(loaded, model, _with_attachments(request))


def tokenize_segments(model: LlamaModel, segments: list[Segment]) -> list[int]:
    tokens: list[int] = []
    if model.add_bos and not (
        segments and segments[0].special and segments[0].text.startswith(model.bos_text)
    ):
        tokens += model.tokenize_segment(model.bos_text, True)
    for segment in segments:
        tokens += model.tokenize_segment(segment.text, segment.special)
    return tokens


def _with_attachments(request: ChatRequest) -> tuple[Message, ...]:
    """Text attachments appended to the last user message, each under its file name."""
    if not request.attachments:
        return request.messages
    notes = "".join(
        f"\n\n[attachment {a.filename or i + 1}]\n{a.data}" for i, a in enumerate(request.attachments)
    )
    messages = list(request.messages)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:
        messages.append(Message("user", notes.lstrip()))
    else:
        messages[last_user] = Message("user", messages[last_user].content + notes)
    return tuple(messages)


def default_slots() -> int:
    """Sequences decoded together: decode is memory-bound, so a few per core pay off."""
    return max(2, min(4, 2 * (os.cpu_count() or 1)))


class _LoopSink:
    """Hands a step's events to an event loop in one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def post(self, deliveries: list[Delivery]) -> None:
        self._loop.call_soon_threadsafe(_deliver, deliveries)


def _deliver(deliveries: list[Delivery]) -> None:
    for deliver, event in deliveries:
        deliver(event)
