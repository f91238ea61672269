"""Which providers this service runs, and which one serves a request."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType
from typing import Self

from providers import FACTORIES, REMOTE, Provider

from .errors import NotFound
from .settings import Settings, SettingsError, env_name
from .types import ModelInfo


class ProviderRegistry:
    """The configured providers, started and closed together."""

    def __init__(self, providers: Mapping[str, Provider], default: str) -> None:
        if default not in providers:
            raise SettingsError(f"provider {default!r} is the default but is not configured")
        self._providers = dict(providers)
        self.default = default
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        factory = FACTORIES.get(settings.provider)
        if factory is None:
            raise SettingsError(
                f"provider {settings.provider!r} [env LLM_PROVIDER] is not a known provider; "
                f"known: {', '.join(sorted(FACTORIES))}"
            )
        names = [settings.provider]
        for name in REMOTE:
            missing = getattr(settings, name).missing()
            if name == settings.provider and missing:
                variables = ", ".join(env_name((name, key)) for key in missing)
                raise SettingsError(f"provider {name} is the default but needs {variables}")
            if not missing and name != settings.provider:
                names.append(name)
        return cls({name: FACTORIES[name](settings) for name in names}, settings.provider)

    def resolve(self, provider: str, model: str) -> tuple[Provider, str]:
        """The provider and model id that serve a request; empty names mean the defaults."""
        name = provider or self.default
        found = self._providers.get(name)
        if found is None:
            raise NotFound(
                f"provider {name!r} is not configured; configured: {', '.join(sorted(self._providers))}"
            )
        return found, model or found.default_model

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        for name, provider in self._providers.items():
            for info in await provider.list_models():
                is_default = name == self.default and info.id == provider.default_model
                models.append(replace(info, is_default=True) if is_default else info)
        return models

    async def __aenter__(self) -> Self:
        for provider in self._providers.values():
            await self._stack.enter_async_context(provider)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
