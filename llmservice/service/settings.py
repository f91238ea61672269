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
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, Union, cast

from pydantic import BaseModel, Field, SecretStr, ValidationError, create_model, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llmservice.kernel.provider import ProviderEntry
from llmservice.kernel.settings import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    ProviderSettings,
    Section,
    SettingsError,
)
from llmservice.kernel.settings import env_name as kernel_env_name
from llmservice.observability.settings import LogSettings, TracingSettings
from llmservice.providers import entries

DEFAULT_CONFIG_FILE = Path("llm.toml")

# The variables every deployment of this kind of service knows, mapped to where they
# live in the settings tree.
_SERVICE_ENV: dict[str, tuple[str, ...]] = {
    "LLM_PROVIDER": ("provider",),
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

# Every documented variable: the service's own, then each provider's (its entry's `env`).
DOCUMENTED_ENV: dict[str, tuple[str, ...]] = _SERVICE_ENV | {
    variable: (entry.kind, key) for entry in entries().values() for variable, key in entry.env.items()
}


class ServerSettings(Section):
    host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    gc_freeze: bool = Field(
        True,
        description="once started, keep what is alive then out of garbage collection (gc.freeze): "
        "full collections stop pausing requests",
    )
    http_port: int = Field(
        8000, ge=-1, le=65535, description="the HTTP shim's; 0 picks a free one, -1: no shim"
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "processes sharing the gRPC and HTTP ports (SO_REUSEPORT), the local engine in the first "
            "only; 0 (auto): one per core when sessions and limits live in Redis and registry.enabled is "
            "false, else 1"
        ),
    )
    shim_in_process: bool = Field(
        True,
        description=(
            "the shim started beside the service calls it in process, without sockets (the same "
            "servicers, interceptors and wire messages); false: over loopback gRPC"
        ),
    )
    drain_grace_s: float = Field(
        10.0,
        ge=0,
        description=(
            "how long SIGTERM waits for in-flight calls, HTTP streams and session turns (the HTTP "
            "and gRPC sides together) before it cuts them"
        ),
    )
    max_body_mb: float = Field(
        16.0,
        gt=0,
        description=(
            "the largest request body the HTTP shim reads (413 beyond it, counted while reading) "
            "and the largest message the gRPC server takes (RESOURCE_EXHAUSTED)"
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Host header names the HTTP shim answers while it listens on loopback, besides "
            "localhost, 127.0.0.1 and ::1 (DNS rebinding); '*': any"
        ),
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description=(
            "browser origins (scheme://host[:port], '*' wildcards) whose pages may call the HTTP "
            "shim, besides its own page and localhost's; '*': any"
        ),
    )
    metrics_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Prometheus /metrics of the gRPC server (9464 in deploy/); 0: a free port, -1: off",
    )


class PrincipalSettings(Section):
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


PublicPart = Literal["health", "reflection", "metrics", "docs"]


class AuthSettings(Section):
    """API keys and what each caller may use. No principals: open local mode."""

    principals: dict[str, PrincipalSettings] = Field(default_factory=dict)
    public: list[PublicPart] = Field(
        default_factory=lambda: cast(list[PublicPart], ["health"]),
        description=(
            "what answers without an API key when principals are set: gRPC and HTTP health, gRPC "
            "reflection, the HTTP shim's /metrics, its API documents (/docs, /redoc, /openapi.json)"
        ),
    )


# A named deployment in llm.toml: one provider's settings under a name of its own, so a
# provider can be configured several times (two Azure regions, say):
#   [deployments.gpt-eu]
#   provider = "azure_openai"
#   endpoint = "https://eu.example.openai.azure.com"
#   deployment = "gpt-4o"
#   api_key_env = "AZURE_EU_KEY"      # secrets come from the environment, not the file


class _Deployment(BaseModel):
    """What a deployment adds to its provider's settings: the `provider` it is, and where its key is."""

    provider: str
    api_key_env: str = Field("", description="environment variable holding this deployment's key")

    def with_key(self) -> Self:
        """These settings, with the key read from `api_key_env` when one is named."""
        if not self.api_key_env:
            return self
        if "api_key" not in type(self).model_fields:  # Bedrock: credentials come from the AWS chain
            raise SettingsError("api_key_env: this provider takes no API key")
        if self.api_key_env not in os.environ:
            raise SettingsError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        return self.model_copy(update={"api_key": SecretStr(os.environ[self.api_key_env])})

    def missing(self) -> list[str]:
        return []  # the provider's settings say (they come first in a deployment's bases)


def _deployment(entry: ProviderEntry) -> type[_Deployment]:
    """`[deployments.NAME]` of this kind: its provider's settings, a `provider` tag and api_key_env."""
    name = entry.settings.__name__.removesuffix("Settings") + "Deployment"
    tag: Any = cast(Any, Literal)[entry.kind]
    bases: Any = (entry.settings, _Deployment)  # the provider's settings first: their config and missing()
    return cast(
        type[_Deployment], create_model(name, __base__=bases, __module__=__name__, provider=(tag, ...))
    )


def _deployment_union() -> Any:
    models = [_deployment(entry) for entry in entries().values() if not entry.local]
    return Annotated[Union[tuple(models)], Field(discriminator="provider")]  # noqa: UP007 -- built at run time


class RoutingSettings(Section):
    cooldown_s: float = Field(30.0, ge=0, description="how long a failing deployment is skipped")


class ListingSettings(Section):
    """How ListModels asks the remote providers (service/listing.py); the local model is
    asked every time and waited for."""

    timeout_s: float = Field(
        2.0,
        gt=0,
        description="how long a listing waits for a remote provider's models (then: its last, not loaded)",
    )
    cache_s: float = Field(
        30.0, ge=0, description="how long a remote provider's model list is reused; 0: never"
    )


class RegistrySettings(Section):
    """Providers registered at run time (ProviderRegistryService, service/registrations.py)."""

    enabled: bool = Field(True, description="serve ProviderRegistryService (admin callers only)")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="loopback or private hosts, addresses or networks (CIDR) a registered target may use",
    )
    lease_s: float = Field(10.0, ge=1, description="the lease a registration gets when it asks for none")
    max_lease_s: float = Field(300.0, ge=1, description="the longest lease granted")
    max_registered: int = Field(64, ge=1, description="how many providers may be registered at once")
    connect_timeout_s: float = Field(
        5.0, gt=0, description="how long a registration waits to reach its target"
    )


class AnnounceSettings(Section):
    """This service registering itself as a provider of another llmservice (a gateway):
    grpc_api/announcer.py. Off while `to` is unset."""

    to: str = Field("", description="host:port of the gateway's gRPC port; unset: do not announce")
    name: str = Field("", description="the provider name to register under (requests' `provider`)")
    target: str = Field(
        "", description="host:port the gateway reaches this service at; unset: server.host and the gRPC port"
    )
    models: list[str] = Field(default_factory=list, description="the models to announce; unset: as listed")
    key_env: str = Field("", description="the variable holding an admin key of the gateway, if it has keys")
    replica_key_env: str = Field(
        "", description="the variable holding the key the gateway is to present here, if this has keys"
    )
    lease_s: float = Field(10.0, ge=1, description="the lease to ask for; renewed at a third of it")

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.to and not self.name:
            raise ValueError("announce.name: the provider name to register under is needed with announce.to")
        return self


class CacheSettings(Section):
    type: Literal["auto", "memory", "redis"] = Field(
        "auto", description="where chat sessions and history live; auto: Redis when redis_url is set"
    )
    redis_url: str = Field("", description="e.g. redis://127.0.0.1:6379/0")

    @property
    def uses_redis(self) -> bool:
        return self.type == "redis" or (self.type == "auto" and bool(self.redis_url))


class ResponsesSettings(Section):
    """Responses kept for the Responses API's `store` (previous_response_id, GET /v1/responses/{id}):
    in Redis when the cache uses it (memory otherwise), per principal."""

    ttl_s: int = Field(
        30 * 24 * 3600, ge=1, description="seconds a stored response is kept (OpenAI: 30 days)"
    )
    max_memory_documents: int = Field(
        10_000, ge=1, description="stored responses kept in memory (without Redis), the oldest dropped first"
    )
    max_bytes: int = Field(16 * 2**20, ge=1024, description="the largest stored response")


class PriceSettings(Section):
    """What a model costs, in USD per million tokens (the providers' own unit)."""

    input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt (input) tokens")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion (output) tokens")


class PrincipalLimits(Section):
    """One caller's limits; 0 means no limit."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0, description="prompt and completion tokens together")
    budget_usd: float = Field(0.0, ge=0, description="spend allowed per budget_period, priced by [pricing]")
    budget_period: Literal["total", "day", "month"] = Field("month", description="UTC calendar periods")


class LimitsSettings(Section):
    """Rate limits and budgets per principal, shared through Redis when cache.redis_url is set.

    `principals` is keyed by principal name ("local" in open mode); "*" applies to every
    principal without an entry of its own.
    """

    principals: dict[str, PrincipalLimits] = Field(default_factory=dict)
    default_max_tokens: int = Field(
        1024, ge=1, description="the completion a request that sets no max_tokens is estimated at"
    )


class EmbeddingsSettings(Section):
    """The Embed API: how many inputs a call may carry, and the persistent cache of vectors."""

    max_inputs: int = Field(2048, ge=1, description="texts per Embed call")
    cache: bool = Field(True, description="keep vectors in an SQLite file and answer repeats from it")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "llmservice", description="where embeddings.sqlite3 lives"
    )


class CatalogueServer(Section):
    """An MCP server the service offers to chat sessions (shown by the web chat page)."""

    url: str = Field(description="http(s) URL, or for stdio the name of a command in llmchat.stdio_servers")
    transport: Literal["streamable_http", "sse", "stdio"] = "streamable_http"
    description: str = ""
    requires_token: bool = Field(False, description="sessions must bring an auth_token for it")


class LLMChatSettings(Section):
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
    max_sessions_per_principal: int = Field(
        100,
        ge=1,
        description="sessions one caller (principal) may have open at once; connecting one more is "
        "refused (RESOURCE_EXHAUSTED, HTTP 429) until one is disconnected or expires",
    )
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
    session_credentials: bool = Field(
        True,
        description="sessions may bring provider settings of their own (llm.config.api_key, base_url, ...): "
        "kept encrypted, never returned; off: only the providers configured here",
    )
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


class ServiceSettings(BaseSettings):
    """The settings tree without the provider sections, which `Settings` adds from the entries."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    provider: str = Field(
        "llamacpp",
        description='provider used when a request names none; "": none configured, the first registered one',
    )
    log_level: str = "INFO"
    logs: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    server: ServerSettings = ServerSettings()
    deployments: dict[str, _Deployment] = Field(default_factory=dict)
    # A model name served by an ordered list of deployments: the first that works answers.
    routes: dict[str, list[str]] = Field(default_factory=dict)
    routing: RoutingSettings = RoutingSettings()
    listing: ListingSettings = ListingSettings()
    registry: RegistrySettings = RegistrySettings()
    announce: AnnounceSettings = AnnounceSettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()
    responses: ResponsesSettings = ResponsesSettings()
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

    def section(self, kind: str) -> ProviderSettings:
        """The settings section of provider kind `kind`."""
        return cast(ProviderSettings, getattr(self, kind))


def _compose() -> type[ServiceSettings]:
    """ServiceSettings with a section per provider kind, and `deployments` of those kinds."""
    sections: dict[str, Any] = {kind: (entry.settings, entry.settings()) for kind, entry in entries().items()}
    deployments: Any = (dict[str, _deployment_union()], Field(default_factory=dict))  # type: ignore[misc]
    return create_model(
        "Settings", __base__=ServiceSettings, __module__=__name__, deployments=deployments, **sections
    )


if TYPE_CHECKING:
    Settings = ServiceSettings
else:
    Settings = _compose()


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
        if raw and raw[0] in "[{":
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
    return kernel_env_name(path, DOCUMENTED_ENV)
