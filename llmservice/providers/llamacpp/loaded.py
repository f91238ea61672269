"""One local model made ready to serve: its weights, decode engine, scheduler and embedder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llmservice.kernel.scheduler import Scheduler
from llmservice.kernel.settings import SettingsError
from llmservice.providers.llamacpp.embedder import Embedder
from llmservice.providers.llamacpp.engine import Engine
from llmservice.providers.llamacpp.gguf_info import quantization
from llmservice.providers.llamacpp.model import LlamaModel
from llmservice.providers.llamacpp.offload import Offload, Placement, devices, placement
from llmservice.providers.llamacpp.prompt import TemplatePrompt, template_source
from llmservice.providers.llamacpp.settings import LlamaCppSettings

log = logging.getLogger(__name__)

# Decode steps of up to this many rows give each sequence the logits it gets alone.
# From 8 rows on, llama.cpp's CPU kernels group the work differently and logits move
# (by up to 1.0 on the bundled model), so a seeded request would answer differently
# depending on its neighbours.
BATCH_INVARIANT_SLOTS = 7


@dataclass(eq=False)
class LoadedModel:
    """Everything one loaded GGUF serves with; `close` frees it all (blocking)."""

    id: str
    path: Path
    model: LlamaModel
    engine: Engine
    scheduler: Scheduler
    embedder: Embedder | None
    template: TemplatePrompt | None  # None: no chat format, the model only completes text
    quantization: str
    size_bytes: int
    placement: Placement
    batch_invariant: bool  # a seeded reply is the same alone or beside others (promised on the CPU)

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
        self.engine.close()
        self.model.close()
        log.info("unloaded %s", self.id)


def open_model(
    model_id: str,
    path: Path,
    s: LlamaCppSettings,
    slots: int,
    chat_template: tuple[str, str],
    offload: Offload,
) -> LoadedModel:
    """Load `path` and start its engine (blocking: run it off the event loop).

    `chat_template` is (the setting's value, its key): empty uses the GGUF's own. Raises
    ValueError when llama.cpp cannot read the file, SettingsError for a template that
    cannot be used.
    """
    log.info("loading %s from %s", model_id, path)
    model = LlamaModel(path, offload)
    try:
        template, chat_format = _template(model, *chat_template)
        if slots > BATCH_INVARIANT_SLOTS:
            log.warning(
                "llamacpp.n_slots=%d: with more than %d sequences in a decode step, a seeded "
                "request's output may depend on what runs beside it",
                slots,
                BATCH_INVARIANT_SLOTS,
            )
        engine = Engine(
            model,
            n_ctx=s.n_ctx,
            n_batch=s.n_batch,
            n_threads=s.n_threads,
            n_slots=slots,
            n_cached=s.cached_sequences,
            n_seqs=s.max_sequences,
            aging_s=s.aging_s,
            batch_invariant=s.batch_invariant,
            prompt_cache=s.prompt_cache != "off",
            host_cache_bytes=s.prompt_cache_mb << 20,
        )
    except BaseException:
        model.close()
        raise
    e = s.embeddings
    embedder = Embedder(model, n_ctx=e.n_ctx, n_seqs=e.n_seqs, n_threads=e.n_threads) if e.enabled else None
    # The scheduler admits as many as the engine holds; the engine picks which of them
    # decode, which keep a cache, and evicts for more urgent work.
    scheduler = Scheduler(engine.n_seqs, max_waiting=s.max_waiting, aging_s=s.aging_s, clock=time.monotonic)
    where = placement(model.ptr, offload, devices())
    log.info(
        "loaded %s %s (%d sequences decoding, %d cached, of %d tokens each; chat format: %s)",
        model_id,
        where.describe(),
        slots,
        engine.n_cached,
        engine.n_ctx,
        chat_format,
    )
    # Batch invariance is what the CPU kernels were measured to keep; a GPU backend's are not.
    invariant = s.batch_invariant and slots <= BATCH_INVARIANT_SLOTS and not where.layers_offloaded
    if template is None:
        log.warning(
            "model %s has no chat template: it only completes text, and chat requests to it are "
            "refused; name one with %s (chatml, gemma, llama3 or a Jinja file)",
            model_id,
            chat_template[1],
        )
    return LoadedModel(
        model_id,
        path,
        model,
        engine,
        scheduler,
        embedder,
        template,
        quantization(model),
        path.stat().st_size,
        where,
        invariant,
    )


def _template(model: LlamaModel, setting: str, key: str) -> tuple[TemplatePrompt | None, str]:
    """The model's chat template, as the setting names it or its GGUF carries it, and a word on which."""
    try:
        if setting:
            return TemplatePrompt(template_source(setting), model.bos_text, model.eos_text), setting
        own = model.chat_template()
        if own:
            return TemplatePrompt(own, model.bos_text, model.eos_text), "the GGUF's own template"
    except ValueError as exc:
        source = key if setting else "the GGUF's tokenizer.chat_template"
        raise SettingsError(f"{source}: {exc}") from None
    return None, "none (completion only)"
