"""The local engine's settings: section `[llamacpp]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, FilePath

from llmservice.kernel.settings import ProviderSettings, Section
from llmservice.kernel.url_policy import UrlPolicy


class LlamaCppEmbeddingSettings(Section):
    """The local model in embedding mode: a context of its own beside the decode engine's."""

    enabled: bool = Field(True, description="serve embeddings from the loaded model")
    n_ctx: int = Field(512, ge=8, description="tokens embedded per decode step; the longest input allowed")
    n_seqs: int = Field(16, ge=1, description="inputs embedded together in one decode step")
    max_request_tokens: int = Field(
        2048,
        ge=8,
        description="tokens one Embed call may carry in all (llama.cpp sets aside ~1 MB of logits each)",
    )
    n_threads: int = Field(
        0, ge=0, description="0 means half the cores (at least one): decode keeps the rest"
    )


class LlamaCppSettings(ProviderSettings):
    model_path: FilePath | None = Field(None, description="a GGUF file; unset means the bundled model")
    model_id: str = Field("", description="id shown in ListModels; defaults to the file name")
    chat_template: str = Field(
        "",
        description=(
            "how the configured model is prompted: empty uses the GGUF's own chat template; else a "
            "built-in name (chatml, gemma, llama3) or a Jinja file. A model with neither only "
            "completes text: chat requests to it are refused"
        ),
    )
    chat_templates: dict[str, str] = Field(
        default_factory=dict, description="the same for the other models in cache_dir, by model id"
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "llmservice" / "models")
    pull_allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "hosts or networks (CIDR) a model pull (PullModel, llmservice models pull) may fetch "
            "from, redirects included, although they are loopback, private or link-local: for "
            "local mirrors; cloud metadata endpoints stay refused"
        ),
    )
    n_ctx: int = Field(4096, ge=64, description="context window of each sequence, in tokens")
    n_batch: int = Field(256, ge=1, description="prompt tokens prefilled per decode step (the chunk size)")
    n_slots: int = Field(0, ge=0, description="sequences decoded together; 0 sizes it for the machine")
    cached_sequences: int = Field(
        0,
        ge=0,
        description=(
            "cache streams in the context, n_ctx tokens each: sequences decoding, paused, and finished "
            "ones kept for prompt caching share them, finished ones giving way first; 0 means twice n_slots"
        ),
    )
    batch_invariant: bool = Field(
        True,
        description=(
            "a seeded request's output is the same alone or beside others; past 256 tokens of "
            "context that costs a lone sequence up to ~30% of its decode speed (docs/prompt-cache.md)"
        ),
    )
    prompt_cache: Literal["exact", "off"] = Field(
        "exact",
        description=(
            "reuse cached prompt prefixes across requests: exact gives the same bits as computing "
            "the prompt afresh; off computes every prompt in full"
        ),
    )
    prompt_cache_mb: int = Field(
        1024,
        ge=0,
        description="host memory for prompt caches that must leave the context (llama-server's --cache-ram)",
    )
    prompt_cache_shared: bool = Field(
        False,
        description=(
            "let callers reuse caches made for other principals (a common system prompt, say); a hit "
            "is faster, so this lets one caller learn what another sent. cache_salt still partitions"
        ),
    )
    max_sequences: int = Field(
        0,
        ge=0,
        description=(
            "sequences the engine holds at once; those beyond the cached ones wait or are "
            "recomputed when they resume; 0 means cached_sequences + n_slots"
        ),
    )
    max_waiting: int = Field(
        64, ge=0, description="requests queued for a slot before the least urgent is shed"
    )
    aging_s: float = Field(10.0, ge=0, description="seconds of waiting that count as one priority step")
    n_threads: int = Field(0, ge=0, description="0 means one per core")
    n_gpu_layers: int = Field(
        -1,
        ge=-1,
        description=(
            "layers offloaded to the GPU: -1 all of them when the build can offload (else none), "
            "0 none; asking for offload on a CPU-only build is a start-up error"
        ),
    )
    main_gpu: int = Field(0, ge=0, description="the GPU that holds the model (or its scratch, when split)")
    tensor_split: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=list, description="shares of the model per GPU, e.g. [3, 1]; empty: llama.cpp's own"
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="flash attention: auto uses it where the backend supports it"
    )
    kv_cache_type: Literal["f16", "q8_0"] = Field(
        "f16", description="the KV cache's element type; q8_0 halves its memory and needs flash attention"
    )
    offload_kqv: bool = Field(True, description="keep the KV cache on the GPU when layers are offloaded")
    temperature: float = Field(0.0, ge=0, le=2, description="used when a request sets none")
    max_tokens: int = Field(512, ge=1, description="used when a request sets none")
    tool_call_max_tokens: int = Field(
        256,
        ge=0,
        description=(
            "tokens a tool call may take past a request's max_tokens, so that a small max_tokens "
            "still lets the model finish a call; an answer stops at max_tokens"
        ),
    )
    idle_unload_s: float = Field(
        0.0, ge=0, description="unload a model unused this long (it loads again on its next use); 0: never"
    )
    memory_budget_mb: int = Field(
        0,
        ge=0,
        description=(
            "weights (file sizes) of the models loaded at once; loading one more unloads the least "
            "recently used first; 0: no budget"
        ),
    )
    embeddings: LlamaCppEmbeddingSettings = LlamaCppEmbeddingSettings()

    def pull_policy(self) -> UrlPolicy:
        """The policy every request of a pull passes, redirects included."""
        return UrlPolicy(self.pull_allowed_hosts, setting="llamacpp.pull_allowed_hosts")
