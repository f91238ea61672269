"""What every settings section is built from, in every layer: a frozen pydantic model that
refuses unknown keys, and the error that names what cannot be used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict


class SettingsError(Exception):
    """Settings that cannot be used; the message names each offending key or variable."""


class Section(BaseModel):
    """A settings section: frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSettings(Section):
    """A provider's settings section (`[openai]`, `[llamacpp]`, ...)."""

    def missing(self) -> list[str]:
        """The keys this section still needs before its provider can run."""
        return []


ENV_PREFIX = "LLMSERVICE_"
ENV_NESTED_DELIMITER = "__"


def env_name(path: Sequence[str], documented: Mapping[str, Sequence[str]]) -> str:
    """The variable that sets a settings path: a documented one (`documented` maps each
    to the path it sets), else the generic one."""
    for name, target in documented.items():
        if tuple(target) == tuple(path):
            return name
    return nested_env_name(path)


def nested_env_name(path: Sequence[str]) -> str:
    """The generic variable that sets a settings path, e.g. LLMSERVICE_SERVER__GRPC_PORT.

    A documented variable (OPENAI_API_KEY, ...) may set the same path as well; the service's
    settings module knows those."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in path)
