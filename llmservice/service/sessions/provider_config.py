"""A session's own provider settings: `llm.config` resolved onto the provider's settings.

The /llmchat document resolves each setting as "explicit llm.config → the provider's
environment variable → error". The server's settings section for the provider already
holds its environment (and llm.toml), so a session's settings are that section with the
session's keys laid over it, checked by the provider's own settings model; what is still
missing is an error naming both places it can come from.

Two rules keep the server's secrets the server's: a session that points a provider at an
endpoint of its own (base_url, azure_endpoint, url, ...) brings its own credentials (the
server's key goes only to the server's endpoint), and every such URL passes the same
outbound-host policy as an MCP server URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from llmservice.kernel.errors import InvalidRequest
from llmservice.kernel.settings import ProviderSettings
from llmservice.providers.remote.settings import RemoteSettings
from llmservice.service.sessions.safety import UrlPolicy
from llmservice.service.settings import env_name

# The documented llm.config keys of each provider kind: config key -> its settings key.
KEYS: dict[str, dict[str, str]] = {
    "openai": {"api_key": "api_key", "base_url": "base_url"},
    "azure_openai": {
        "api_key": "api_key",
        "azure_endpoint": "endpoint",
        "azure_deployment": "deployment",
        "api_version": "api_version",
    },
    "anthropic": {"api_key": "api_key", "base_url": "base_url", "api_version": "api_version"},
    "aws_bedrock": {
        "region_name": "region",
        "aws_access_key_id": "access_key_id",
        "aws_secret_access_key": "secret_access_key",
        "aws_session_token": "session_token",
        "endpoint_url": "endpoint_url",
    },
    "watsonx": {
        "api_key": "api_key",
        "url": "url",
        "project_id": "project_id",
        "iam_url": "iam_url",
        "api_version": "api_version",
    },
    "ollama": {"base_url": "base_url", "num_ctx": "num_ctx"},
    "openai_compatible": {"api_key": "api_key", "base_url": "base_url"},
}
REMOTE_KEYS = {"timeout": "timeout_s", "max_retries": "max_attempts"}  # every remote kind
SECRETS = frozenset({"api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"})
ENDPOINTS = frozenset({"base_url", "azure_endpoint", "url", "iam_url", "endpoint_url"})
MASK = "********"


def keys_of(kind: str, settings: type[ProviderSettings]) -> dict[str, str]:
    """The llm.config keys provider `kind` takes beyond the sampling ones."""
    remote = REMOTE_KEYS if issubclass(settings, RemoteSettings) else {}
    return {**KEYS.get(kind, {}), **remote}


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it may be shown: secrets masked."""
    return {k: MASK if k in SECRETS and v else v for k, v in config.items()}


async def session_settings(
    kind: str, server: ProviderSettings, config: Mapping[str, Any], model: str, urls: UrlPolicy
) -> ProviderSettings:
    """Provider `kind`'s settings for a session: `server`'s (its environment) under the
    session's `config` and `model`; InvalidRequest naming what is wrong or missing."""
    keys = keys_of(kind, type(server))
    for name in config:
        if name not in keys:
            takes = ", ".join(sorted(keys)) or "none"
            raise InvalidRequest(
                f"llm.config.{name}", f"is not a setting of provider {kind} (its own settings: {takes})"
            )
    for name in sorted(ENDPOINTS & set(config)):
        await urls.check(str(config[name]), f"llm.config.{name}")
    own_endpoint = bool(ENDPOINTS & set(config))
    base = server.model_dump()
    if own_endpoint:  # the server's credentials go only to the server's endpoints
        for name in SECRETS & set(keys):
            base[keys[name]] = None
    update: dict[str, Any] = {keys[n]: SecretStr(str(v)) if n in SECRETS else v for n, v in config.items()}
    if "max_attempts" in update:
        update["max_attempts"] = int(update["max_attempts"]) + 1  # retries after the first try
    if model:
        update["model"] = model
    try:
        settings = type(server).model_validate({**base, **update})
    except ValidationError as exc:  # the message only: the input may be a secret
        error = exc.errors()[0]
        setting = str(error["loc"][0]) if error["loc"] else ""
        name = next((n for n, k in keys.items() if k == setting), setting or "config")
        raise InvalidRequest(f"llm.config.{name}", str(error["msg"])) from None
    missing = settings.missing()
    if kind == "aws_bedrock" and not missing:
        missing = _bedrock_keys(settings, own_endpoint)
    if missing:
        raise _required(kind, keys, missing[0], own_endpoint)
    return settings


def _bedrock_keys(settings: ProviderSettings, own_endpoint: bool) -> list[str]:
    """Bedrock's credentials come from the AWS chain unless given, and then as a pair; an
    endpoint of the session's own gets the session's own."""
    key, secret = getattr(settings, "access_key_id", None), getattr(settings, "secret_access_key", None)
    if (key is None) != (secret is None) or (own_endpoint and key is None):
        return ["secret_access_key" if key is not None else "access_key_id"]
    return []


_AWS_CHAIN = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY"}
MODEL_ID_KINDS = ("aws_bedrock", "watsonx")  # their documented config names the model model_id


def _required(kind: str, keys: Mapping[str, str], setting: str, own_endpoint: bool) -> InvalidRequest:
    name = next((n for n, k in keys.items() if k == setting), setting)
    if name == "model" and kind in MODEL_ID_KINDS:
        name = "model_id"
    what = "API key" if name == "api_key" else name
    if own_endpoint and name in SECRETS:
        message = (
            f"{what} is required for provider {kind} with an endpoint of the session's own: "
            f"set llm.config.{name} (the server's credentials go only to its own endpoint)"
        )
    else:
        variable = _AWS_CHAIN.get(name) or env_name((kind, setting))
        message = f"{what} is required for provider {kind}: set llm.config.{name} or {variable}"
    return InvalidRequest(f"llm.config.{name}", "is required", message=message)
