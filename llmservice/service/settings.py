"""Settings: one validated tree, loaded once at start-up.

Sources, strongest first: CLI overrides (`--set key=value`, dotted keys for nested
settings) > `LLMSERVICE_*` environment variables (`__` between nested keys) > the
documented provider variables (`LLM_PROVIDER`, ...) > `llm.toml` > defaults.
This is the only module that reads the process environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "LLMSERVICE_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_CONFIG_FILE = Path("llm.toml")

# The provider variables every deployment of this kind of service knows, mapped to
# where they live in the settings tree. Provider issues extend this table.
DOCUMENTED_ENV: dict[str, tuple[str, ...]] = {
    "LLM_PROVIDER": ("provider",),
    "OPENAI_API_KEY": ("openai", "api_key"),
    "OPENAI_MODEL": ("openai", "model"),
    "OPENAI_BASE_URL": ("openai", "base_url"),
    "OPENAI_TEMPERATURE": ("openai", "temperature"),
    "AZURE_OPENAI_API_KEY": ("azure_openai", "api_key"),
    "AZURE_OPENAI_ENDPOINT": ("azure_openai", "endpoint"),
    "AZURE_OPENAI_DEPLOYMENT": ("azure_openai", "deployment"),
    "AZURE_OPENAI_API_VERSION": ("azure_openai", "api_version"),
    "AZURE_OPENAI_TEMPERATURE": ("azure_openai", "temperature"),
    "ANTHROPIC_API_KEY": ("anthropic", "api_key"),
    "ANTHROPIC_MODEL": ("anthropic", "model"),
    "ANTHROPIC_TEMPERATURE": ("anthropic", "temperature"),
    "ANTHROPIC_MAX_TOKENS": ("anthropic", "max_tokens"),
    "WATSONX_APIKEY": ("watsonx", "api_key"),
    "WATSONX_URL": ("watsonx", "url"),
    "WATSONX_PROJECT_ID": ("watsonx", "project_id"),
    "WATSONX_MODEL_ID": ("watsonx", "model"),
    "WATSONX_TEMPERATURE": ("watsonx", "temperature"),
    "AWS_BEDROCK_MODEL_ID": ("aws_bedrock", "model"),
    "AWS_BEDROCK_REGION": ("aws_bedrock", "region"),
    "AWS_BEDROCK_TEMPERATURE": ("aws_bedrock", "temperature"),
    "AWS_BEDROCK_MAX_TOKENS": ("aws_bedrock", "max_tokens"),
    "OLLAMA_MODEL": ("ollama", "model"),
    "OLLAMA_BASE_URL": ("ollama", "base_url"),
    "OLLAMA_TEMPERATURE": ("ollama", "temperature"),
    "CACHE_TYPE": ("cache", "type"),
    "REDIS_URL": ("cache", "redis_url"),
    "LLMCHAT_CHAT_HISTORY_TTL": ("llmchat", "chat_history_ttl"),
    "LLMCHAT_CHAT_HISTORY_MAX_MESSAGES": ("llmchat", "chat_history_max_messages"),
    "LLMCHAT_SESSION_TTL": ("llmchat", "session_ttl"),
    "LLMCHAT_SESSION_LOCK_TTL": ("llmchat", "session_lock_ttl"),
    "LLMCHAT_SESSION_LOCK_RETRIES": ("llmchat", "session_lock_retries"),
    "LLMCHAT_SESSION_LOCK_WAIT": ("llmchat", "session_lock_wait"),
    "LLMCHAT_TURN_TIMEOUT": ("llmchat", "turn_timeout_s"),
    "LLMCHAT_TOOL_TIMEOUT": ("llmchat", "tool_timeout_s"),
    "LLMCHAT_MAX_STEPS": ("llmchat", "max_steps"),
    "LLMCHAT_SECRET_KEY": ("llmchat", "secret_key"),
    # OpenTelemetry's standard variables (the exporter reads only what these give it).
    "OTEL_TRACES_EXPORTER": ("tracing", "exporter"),
    "OTEL_SDK_DISABLED": ("tracing", "sdk_disabled"),
    "OTEL_SERVICE_NAME": ("tracing", "service_name"),
    "OTEL_RESOURCE_ATTRIBUTES": ("tracing", "resource_attributes"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("tracing", "endpoint"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("tracing", "traces_endpoint"),
    "OTEL_EXPORTER_OTLP_HEADERS": ("tracing", "headers"),
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": ("tracing", "traces_headers"),
    "OTEL_EXPORTER_OTLP_TIMEOUT": ("tracing", "timeout_ms"),
    "OTEL_TRACES_SAMPLER_ARG": ("tracing", "sample_ratio"),
}


class SettingsError(Exception):
    """Settings that cannot be used; the message names each offending key or variable."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    http_port: int = Field(
        8000, ge=-1, le=65535, description="the HTTP shim's; 0 picks a free one, -1: no shim"
    )
    shim_in_process: bool = Field(
        True,
        description=(
            "the shim started beside the service calls it in process, without sockets (the same "
            "servicers, interceptors and wire messages); false: over loopback gRPC"
        ),
    )
    drain_grace_s: float = Field(10.0, ge=0, description="how long SIGTERM waits for in-flight calls")
    metrics_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Prometheus /metrics of the gRPC server (9464 in deploy/); 0: a free port, -1: off",
    )


class PrincipalSettings(_Section):
    """One caller: the key it presents (by its SHA-256, or read from a variable) and its models."""

    key_sha256: str = Field("", description="hex SHA-256 of the API key (so the file holds no key)")
    key_env: str = Field("", description="or: the environment variable that holds the key")
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="model patterns it may use: 'gpt-4o', 'openai/*', '*'"
    )
    admin: bool = Field(False, description="may load, unload, pull and delete models (ModelAdminService)")

    def key_digest(self) -> str:
        if self.key_env:
            if self.key_env not in os.environ:
                raise SettingsError(f"environment variable {self.key_env} (key_env) is not set")
            return hashlib.sha256(os.environ[self.key_env].encode()).hexdigest()
        if not self.key_sha256:
            raise SettingsError("a principal needs key_sha256 or key_env")
        if len(self.key_sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.key_sha256):
            raise SettingsError("key_sha256 must be 64 hex digits (sha256sum of the key)")
        return self.key_sha256.lower()


class AuthSettings(_Section):
    """API keys and what each caller may use. No principals: open local mode."""

    principals: dict[str, PrincipalSettings] = Field(default_factory=dict)


class LlamaCppEmbeddingSettings(_Section):
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


class LlamaCppSettings(_Section):
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
    temperature: float = Field(0.0, ge=0, le=2, description="used when a request sets none")
    max_tokens: int = Field(512, ge=1, description="used when a request sets none")
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


class RemoteSettings(_Section):
    """What every remote backend has: a request timeout and a retry budget."""

    timeout_s: float = Field(120.0, gt=0, description="one upstream call, first byte to last")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="tries per call, the first included")
    max_concurrency: int = Field(64, ge=1, description="calls in flight at once; more wait, by priority")
    max_waiting: int = Field(256, ge=0, description="calls queued for a slot before the least urgent is shed")


class OpenAISettings(RemoteSettings):
    api_key: SecretStr | None = None
    model: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    temperature: float | None = Field(None, ge=0, le=2)

    def missing(self) -> list[str]:
        return [] if self.api_key else ["api_key"]


class AzureOpenAISettings(RemoteSettings):
    api_key: SecretStr | None = None
    endpoint: str = Field("", description="https://NAME.openai.azure.com")
    deployment: str = Field("", description="the deployment name, used as the model id")
    api_version: str = "2024-10-21"
    temperature: float | None = Field(None, ge=0, le=2)

    def missing(self) -> list[str]:
        return [name for name in ("api_key", "endpoint", "deployment") if not getattr(self, name)]


class OpenAICompatibleSettings(RemoteSettings):
    """Any server that speaks the OpenAI API: vLLM, LM Studio, HF TGI, OpenRouter, llama.cpp."""

    base_url: str = Field("", description="e.g. http://127.0.0.1:8000/v1")
    api_key: SecretStr | None = Field(None, description="sent as a Bearer token when set")
    model: str = Field("", description="default model; empty asks the server for its first model")
    temperature: float | None = Field(None, ge=0, le=2)
    flavour: Literal["generic", "llamacpp", "vllm", "lmstudio", "openrouter", "tgi"] = Field(
        "generic",
        description=(
            "which server it is: decides the names top_k, min_p and the repetition penalty go by; "
            "generic refuses them, since an unknown server may drop them silently"
        ),
    )

    def missing(self) -> list[str]:
        return [] if self.base_url else ["base_url"]


class AnthropicSettings(RemoteSettings):
    api_key: SecretStr | None = None
    model: str = "claude-sonnet-4-5"
    base_url: str = "https://api.anthropic.com"
    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: int = Field(4096, ge=1, description="Anthropic requires one; used when a request sets none")
    api_version: str = Field("2023-06-01", description="the anthropic-version header")

    def missing(self) -> list[str]:
        return [] if self.api_key else ["api_key"]


class WatsonxSettings(RemoteSettings):
    api_key: SecretStr | None = None
    url: str = Field("", description="the region's endpoint, e.g. https://us-south.ml.cloud.ibm.com")
    project_id: str = ""
    model: str = "ibm/granite-3-8b-instruct"
    temperature: float | None = Field(None, ge=0, le=2)
    iam_url: str = Field("https://iam.cloud.ibm.com", description="where the API key becomes a token")
    api_version: str = Field("2024-10-08", description="the version query parameter")

    def missing(self) -> list[str]:
        return [name for name in ("api_key", "url", "project_id") if not getattr(self, name)]


class BedrockSettings(RemoteSettings):
    """AWS Bedrock's Converse API. Credentials come from the standard AWS chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, roles)."""

    model: str = Field(
        "", description="a model or inference profile id, e.g. anthropic.claude-3-haiku-20240307-v1:0"
    )
    region: str = ""
    temperature: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    endpoint_url: str = Field("", description="overrides https://bedrock-runtime.REGION.amazonaws.com")

    def missing(self) -> list[str]:
        return [name for name in ("model", "region") if not getattr(self, name)]


class OllamaSettings(RemoteSettings):
    """An Ollama server's native API (not its OpenAI-compatible one)."""

    base_url: str = "http://127.0.0.1:11434"
    model: str = Field("", description="default model; Ollama has none of its own")
    temperature: float | None = Field(None, ge=0, le=2)
    keep_alive: str = Field("5m", description="how long Ollama keeps a model loaded after a request")

    def missing(self) -> list[str]:
        return [] if self.model else ["model"]


# A named deployment in llm.toml: one provider's settings under a name of its own, so a
# provider can be configured several times (two Azure regions, say):
#   [deployments.gpt-eu]
#   provider = "azure_openai"
#   endpoint = "https://eu.example.openai.azure.com"
#   deployment = "gpt-4o"
#   api_key_env = "AZURE_EU_KEY"      # secrets come from the environment, not the file


class _Deployment(BaseModel):
    api_key_env: str = Field("", description="environment variable holding this deployment's key")

    def with_key(self) -> Any:
        """These settings, with the key read from `api_key_env` when one is named."""
        if not self.api_key_env:
            return self
        if "api_key" not in type(self).model_fields:  # Bedrock: credentials come from the AWS chain
            raise SettingsError("api_key_env: this provider takes no API key")
        if self.api_key_env not in os.environ:
            raise SettingsError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        return self.model_copy(update={"api_key": SecretStr(os.environ[self.api_key_env])})


class OpenAIDeployment(OpenAISettings, _Deployment):
    provider: Literal["openai"]


class AzureOpenAIDeployment(AzureOpenAISettings, _Deployment):
    provider: Literal["azure_openai"]


class OpenAICompatibleDeployment(OpenAICompatibleSettings, _Deployment):
    provider: Literal["openai_compatible"]


class AnthropicDeployment(AnthropicSettings, _Deployment):
    provider: Literal["anthropic"]


class OllamaDeployment(OllamaSettings, _Deployment):
    provider: Literal["ollama"]


class WatsonxDeployment(WatsonxSettings, _Deployment):
    provider: Literal["watsonx"]


class BedrockDeployment(BedrockSettings, _Deployment):
    provider: Literal["aws_bedrock"]


Deployment = Annotated[
    OpenAIDeployment
    | AzureOpenAIDeployment
    | OpenAICompatibleDeployment
    | AnthropicDeployment
    | OllamaDeployment
    | WatsonxDeployment
    | BedrockDeployment,
    Field(discriminator="provider"),
]


class RoutingSettings(_Section):
    cooldown_s: float = Field(30.0, ge=0, description="how long a failing deployment is skipped")


class CacheSettings(_Section):
    type: Literal["auto", "memory", "redis"] = Field(
        "auto", description="where chat sessions and history live; auto: Redis when redis_url is set"
    )
    redis_url: str = Field("", description="e.g. redis://127.0.0.1:6379/0")

    @property
    def uses_redis(self) -> bool:
        return self.type == "redis" or (self.type == "auto" and bool(self.redis_url))


class PriceSettings(_Section):
    """What a model costs, in USD per million tokens (the providers' own unit)."""

    input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt (input) tokens")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion (output) tokens")


class PrincipalLimits(_Section):
    """One caller's limits; 0 means no limit."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0, description="prompt and completion tokens together")
    budget_usd: float = Field(0.0, ge=0, description="spend allowed per budget_period, priced by [pricing]")
    budget_period: Literal["total", "day", "month"] = Field("month", description="UTC calendar periods")


class LimitsSettings(_Section):
    """Rate limits and budgets per principal, shared through Redis when cache.redis_url is set.

    `principals` is keyed by principal name ("local" in open mode); "*" applies to every
    principal without an entry of its own.
    """

    principals: dict[str, PrincipalLimits] = Field(default_factory=dict)
    default_max_tokens: int = Field(
        1024, ge=1, description="the completion a request that sets no max_tokens is estimated at"
    )


class LogSettings(_Section):
    format: Literal["text", "json", "kv"] = Field("text", description="json: JSON lines; kv: key=value")
    payloads: bool = Field(
        False, description="debug: log request and reply payloads (secrets are redacted even then)"
    )


class TracingSettings(_Section):
    """OpenTelemetry tracing (the `tracing` extra), from the standard OTEL_* variables."""

    exporter: Literal["none", "otlp", "console"] = Field(
        "none", description="OTEL_TRACES_EXPORTER; none: tracing off, nothing of it is imported"
    )
    sdk_disabled: bool = False
    service_name: str = "llmservice"
    resource_attributes: str = Field("", description="key=value,key=value")
    endpoint: str = Field("", description="the collector's base URL; /v1/traces is added")
    traces_endpoint: str = Field("", description="the full traces URL; wins over endpoint")
    headers: SecretStr | None = Field(None, description="key=value,key=value sent with each export")
    traces_headers: SecretStr | None = None
    timeout_ms: int = Field(10000, gt=0)
    sample_ratio: float = Field(1.0, ge=0, le=1, description="of new traces; a caller's decision is kept")

    @property
    def enabled(self) -> bool:
        return self.exporter != "none" and not self.sdk_disabled


class EmbeddingsSettings(_Section):
    """The Embed API: how many inputs a call may carry, and the persistent cache of vectors."""

    max_inputs: int = Field(2048, ge=1, description="texts per Embed call")
    cache: bool = Field(True, description="keep vectors in an SQLite file and answer repeats from it")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "llmservice", description="where embeddings.sqlite3 lives"
    )


class CatalogueServer(_Section):
    """An MCP server the service offers to chat sessions (shown by the web chat page)."""

    url: str = Field(description="http(s) URL, or for stdio the name of a command in llmchat.stdio_servers")
    transport: Literal["streamable_http", "sse", "stdio"] = "streamable_http"
    description: str = ""
    requires_token: bool = Field(False, description="sessions must bring an auth_token for it")


class LLMChatSettings(_Section):
    """Chat sessions (/llmchat): history, multi-worker ownership, the agent loop, and safety."""

    chat_history_ttl: int = Field(
        3600, ge=1, description="seconds a conversation is kept after its last turn"
    )
    chat_history_max_messages: int = Field(50, ge=2, description="messages kept per conversation")
    session_ttl: int = Field(
        300, ge=1, description="seconds a worker's ownership of a session lasts unrenewed"
    )
    session_lock_ttl: int = Field(30, ge=1, description="seconds the lock around building a session lasts")
    session_lock_retries: int = Field(10, ge=0)
    session_lock_wait: float = Field(0.2, ge=0, description="seconds between tries for that lock")
    turn_timeout_s: float = Field(120.0, gt=0, description="a whole turn, tools included")
    tool_timeout_s: float = Field(30.0, gt=0, description="one tool call")
    connect_timeout_s: float = Field(
        15.0, gt=0, description="connecting to an MCP server and listing its tools"
    )
    max_steps: int = Field(8, ge=1, description="model calls per turn before the loop gives up on tools")
    # MCP servers a session may launch as a subprocess (transport stdio): name -> argv.
    stdio_servers: dict[str, list[str]] = Field(default_factory=dict)
    # The catalogue of MCP servers offered to sessions: name -> server. Listed with a probe
    # of each (reachable, tools) by ListServers and the web chat page.
    servers: dict[str, CatalogueServer] = Field(default_factory=dict)
    probe_timeout_s: float = Field(5.0, gt=0, description="connecting to a catalogue server to probe it")
    probe_ttl_s: float = Field(30.0, ge=0, description="seconds a catalogue probe's result is reused")
    # Hosts or networks (CIDR) an MCP server URL may point at even though they are loopback,
    # private or link-local: for local development. Metadata endpoints stay refused.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Encrypts session secrets (MCP tokens, LLM keys) kept in Redis; every worker needs the
    # same one. Unset: a random key per process (sessions then cannot move between workers).
    secret_key: SecretStr | None = None

    @model_validator(mode="after")
    def _stdio_servers_named(self) -> LLMChatSettings:
        for name, server in self.servers.items():
            if server.transport == "stdio" and server.url not in self.stdio_servers:
                known = ", ".join(sorted(self.stdio_servers)) or "none are configured"
                raise ValueError(
                    f"servers.{name}.url: stdio server {server.url!r} is not in "
                    f"llmchat.stdio_servers ({known})"
                )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    provider: str = Field("llamacpp", description="provider used when a request names none")
    log_level: str = "INFO"
    logs: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    server: ServerSettings = ServerSettings()
    llamacpp: LlamaCppSettings = LlamaCppSettings()
    openai: OpenAISettings = OpenAISettings()
    azure_openai: AzureOpenAISettings = AzureOpenAISettings()
    openai_compatible: OpenAICompatibleSettings = OpenAICompatibleSettings()
    anthropic: AnthropicSettings = AnthropicSettings()
    ollama: OllamaSettings = OllamaSettings()
    watsonx: WatsonxSettings = WatsonxSettings()
    aws_bedrock: BedrockSettings = BedrockSettings()
    deployments: dict[str, Deployment] = Field(default_factory=dict)
    # A model name served by an ordered list of deployments: the first that works answers.
    routes: dict[str, list[str]] = Field(default_factory=dict)
    routing: RoutingSettings = RoutingSettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()
    llmchat: LLMChatSettings = LLMChatSettings()
    embeddings: EmbeddingsSettings = EmbeddingsSettings()
    # Prices keyed by "provider/model" (fnmatch patterns: "openai/*", "gpt-eu/*").
    pricing: dict[str, PriceSettings] = Field(default_factory=dict)
    limits: LimitsSettings = LimitsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML source reads the file named in model_config (see load_settings).
        return (
            init_settings,
            env_settings,
            _DocumentedEnvSource(settings_cls),
            TomlConfigSettingsSource(settings_cls),
        )


class _DocumentedEnvSource(InitSettingsSource):
    """The documented provider variables (LLM_PROVIDER, ...), as a nested dict."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        tree: dict[str, Any] = {}
        for name, path in DOCUMENTED_ENV.items():
            if name in os.environ:
                _set_path(tree, path, os.environ[name])
        super().__init__(settings_cls, tree)


def load_settings(config_file: Path | None = None, overrides: Sequence[str] = ()) -> Settings:
    """Load and validate settings; raise SettingsError naming every problem.

    `config_file` defaults to `$LLMSERVICE_CONFIG`, then `./llm.toml` when it exists.
    """
    config_file = config_file or _default_config_file()
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")
    init = parse_overrides(overrides)

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        return _FromFile(**init)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, config_file)) from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn `["server.grpc_port=0", ...]` into a nested dict; JSON lists and objects are parsed."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {item!r}: expected key=value")
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"--set {key}: value is not valid JSON ({exc.msg})") from None
        _set_path(tree, tuple(key.strip().split(".")), value)
    return tree


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _default_config_file() -> Path | None:
    named = os.environ.get(ENV_PREFIX + "CONFIG")
    if named:
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    where = f" (config file {config_file}, environment or --set)" if config_file else ""
    lines = [f"invalid settings{where}:"]
    for error in exc.errors():
        path = tuple(str(part) for part in error["loc"])
        lines.append(f"  {'.'.join(path)} [env {env_name(path)}]: {error['msg']}")
    return "\n".join(lines)


def env_name(path: Sequence[str]) -> str:
    """The environment variable that sets a settings path, e.g. LLMSERVICE_SERVER__GRPC_PORT."""
    documented = [name for name, target in DOCUMENTED_ENV.items() if target == tuple(path)]
    if documented:
        return documented[0]
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in path)
