"""Which providers this service runs, and which one serves a request."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from types import TracebackType
from typing import Self

from llmservice.kernel.errors import NotFound
from llmservice.kernel.provider import Provider
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ModelInfo
from llmservice.providers import entries
from llmservice.service.routing import FallbackRoute
from llmservice.service.settings import Settings, env_name


class ProviderRegistry:
    """The configured providers, started and closed together."""

    def __init__(
        self, providers: Mapping[str, Provider], default: str, routes: Mapping[str, Provider] | None = None
    ) -> None:
        if default not in providers:
            raise SettingsError(f"provider {default!r} is the default but is not configured")
        self._providers = dict(providers)
        self._routes = dict(routes or {})
        self.default = default
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        """The default provider, every remote one whose settings are present, the named
        deployments of llm.toml, and the fallback routes over them. A remote provider
        with some of its settings but not all it needs fails here, naming what is missing."""
        kinds = entries()
        known = sorted(set(kinds) | set(settings.deployments))
        if settings.provider not in known:
            raise SettingsError(
                f"provider {settings.provider!r} [env LLM_PROVIDER] is not a known provider or deployment; "
                f"known: {', '.join(known)}"
            )
        providers: dict[str, Provider] = {}
        for kind, entry in kinds.items():
            section = settings.section(kind)
            if entry.local:  # in-process: only as the default
                if kind == settings.provider:
                    providers[kind] = entry.factory(section, kind)
                continue
            missing = section.missing()
            if missing and (kind == settings.provider or section.model_fields_set):
                # the default, or one configured in part (a key without its endpoint, say):
                # either way the operator meant it to run
                variables = ", ".join(env_name((kind, key)) for key in missing)
                why = "is the default" if kind == settings.provider else "is configured in part"
                raise SettingsError(f"provider {kind} {why} but needs {variables}")
            if not missing:
                providers[kind] = entry.factory(section, kind)
        for name, deployment in settings.deployments.items():
            if name in kinds:
                raise SettingsError(f"deployments.{name}: that is the name of a provider; pick another")
            try:
                configured = deployment.with_key()
            except SettingsError as exc:
                raise SettingsError(f"deployments.{name}: {exc}") from None
            missing = configured.missing()
            if missing:
                raise SettingsError(f"deployments.{name} needs {', '.join(missing)}")
            providers[name] = kinds[deployment.provider].factory(configured, name)
        routes: dict[str, Provider] = {}
        for model, members in settings.routes.items():
            unknown = [m for m in members if m not in providers]
            if unknown or not members:
                raise SettingsError(
                    f"routes.{model}: {', '.join(map(repr, unknown)) or 'no deployments'}; "
                    f"configured: {', '.join(sorted(providers))}"
                )
            routes[model] = FallbackRoute(
                model, [providers[m] for m in members], cooldown_s=settings.routing.cooldown_s
            )
        return cls(providers, settings.provider, routes)

    def resolve(self, provider: str, model: str) -> tuple[Provider, str]:
        """The provider and model id that serve a request; empty names mean the defaults.

        A model that names a route goes to the route when no provider is named.
        """
        if not provider and model in self._routes:
            return self._routes[model], model
        name = provider or self.default
        found = self._providers.get(name)
        if found is None:
            raise NotFound(
                f"provider {name!r} is not configured; configured: {', '.join(sorted(self._providers))}"
            )
        return found, model or found.default_model

    def has(self, name: str) -> bool:
        return name in self._providers

    def providers(self) -> list[tuple[str, Provider]]:
        """Every configured provider and fallback route, by name (for metrics)."""
        return [*self._providers.items(), *self._routes.items()]

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        for name, provider in self._providers.items():
            for info in await provider.list_models():
                is_default = name == self.default and info.id == provider.default_model
                models.append(replace(info, is_default=True) if is_default else info)
        for route in self._routes.values():
            models += await route.list_models()
        return models

    async def __aenter__(self) -> Self:
        for provider in self._providers.values():
            await self._stack.enter_async_context(provider)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
