"""Which providers this service runs, and which one serves a request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Self

from llmservice.kernel.errors import NotFound, Unavailable
from llmservice.kernel.provider import Provider
from llmservice.kernel.settings import SettingsError
from llmservice.kernel.types import ModelInfo
from llmservice.providers import entries
from llmservice.service.listing import ProviderListing
from llmservice.service.routing import FallbackRoute
from llmservice.service.settings import ListingSettings, Settings, env_name


class ProviderRegistry:
    """The configured providers, started and closed together."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        default: str,
        routes: Mapping[str, Provider] | None = None,
        *,
        listing: ListingSettings | None = None,
        local: Collection[str] = (),
    ) -> None:
        """`listing`: how long ListModels waits for each provider and reuses its answer (by
        default it waits for every one and reuses nothing); `local`: the names of the
        in-process providers, which it always asks afresh and waits for."""
        if default and default not in providers:
            raise SettingsError(f"provider {default!r} is the default but is not configured")
        self._providers = dict(providers)
        self._routes = dict(routes or {})
        self.default = default  # "": none configured; then the first registered one (`add`)
        self._configured_default = default
        self._registered: list[str] = []  # registered at run time, oldest first
        self._listing_settings = listing
        self.changed = asyncio.Event()  # set when a provider is registered or dropped (health reads it)
        self._stack = contextlib.AsyncExitStack()
        # One listing per provider asked: the providers, a route's deployments (all of them
        # providers here when built from settings) and any other kind of route.
        asked = {id(p): p for p in self._providers.values()}
        for route in self._routes.values():
            for member in route.members if isinstance(route, FallbackRoute) else [route]:
                asked.setdefault(id(member), member)
        in_process = {id(self._providers[name]) for name in local if name in self._providers}
        self._listings = {
            key: self._listing(provider, in_process=key in in_process) for key, provider in asked.items()
        }

    @classmethod
    def from_settings(
        cls, settings: Settings, stand_in: Callable[[str], Provider] | None = None
    ) -> ProviderRegistry:
        """The default provider, every remote one whose settings are present, the named
        deployments of llm.toml, and the fallback routes over them. A remote provider
        with some of its settings but not all it needs fails here, naming what is missing.
        `stand_in`: what stands in for an in-process provider (by its kind) where this process
        does not run it (a worker forwarding to the engine worker)."""
        kinds = entries()
        known = sorted(set(kinds) | set(settings.deployments))
        if settings.provider and settings.provider not in known:
            raise SettingsError(
                f"provider {settings.provider!r} [env LLM_PROVIDER] is not a known provider or deployment; "
                f"known: {', '.join(known)}"
            )
        providers: dict[str, Provider] = {}
        for kind, entry in kinds.items():
            section = settings.section(kind)
            if entry.local:  # in-process: only as the default
                if kind == settings.provider:
                    providers[kind] = stand_in(kind) if stand_in else entry.factory(section, kind)
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
        local = [kind for kind, entry in kinds.items() if entry.local]
        return cls(providers, settings.provider, routes, listing=settings.listing, local=local)

    def resolve(self, provider: str, model: str) -> tuple[Provider, str]:
        """The provider and model id that serve a request; empty names mean the defaults.

        A model that names a route goes to the route when no provider is named.
        """
        if not provider and model in self._routes:
            return self._routes[model], model
        name = provider or self.default
        if not name:
            raise Unavailable(
                "no provider is configured as the default and none is registered yet: "
                "name one in `provider`, or register one (ProviderRegistryService)",
                retry_after_s=1.0,
            )
        found = self._providers.get(name)
        if found is None:
            raise NotFound(
                f"provider {name!r} is not configured; configured: {', '.join(sorted(self._providers))}"
            )
        return found, model or found.default_model

    def has(self, name: str) -> bool:
        return name in self._providers

    def names(self) -> list[str]:
        """The configured providers' names, the default first."""
        first = [self.default] if self.default else []
        return [*first, *(name for name in self._providers if name != self.default)]

    def named(self) -> list[tuple[str, Provider]]:
        """Every provider a request's `provider` may name, configured or registered."""
        return list(self._providers.items())

    def providers(self) -> list[tuple[str, Provider]]:
        """Every configured provider and fallback route, by name (for metrics)."""
        return [*self._providers.items(), *self._routes.items()]

    async def list_models(self) -> list[ModelInfo]:
        """Every provider's models, then the routes: the providers asked at once, each as
        service/listing.py says (a remote one waited for at most listing.timeout_s), a
        route described from the answers of its deployments."""
        providers, listings = dict(self._providers), dict(self._listings)  # as they are now:
        keys = list(listings)  # a registration may come or go while the providers answer
        answers = await asyncio.gather(*(listings[key].models() for key in keys))
        listed = {key: answer.models for key, answer in zip(keys, answers, strict=True)}
        models: list[ModelInfo] = []
        for name, provider in providers.items():
            for info in listed[id(provider)]:
                is_default = name == self.default and info.id == provider.default_model
                models.append(replace(info, is_default=True) if is_default else info)
        for route in self._routes.values():
            if isinstance(route, FallbackRoute):
                models.append(route.describe([listed[id(m)] for m in route.members]))
            else:
                models += listed[id(route)]
        return models

    async def lists(self, name: str, model: str) -> bool | None:
        """Whether configured provider `name` lists `model`; None when it did not answer
        within listing.timeout_s (nobody can tell)."""
        provider = self._providers.get(name)
        listing = self._listings.get(id(provider)) if provider is not None else None
        if listing is None:  # a registered provider dropped meanwhile
            return None
        answer = await listing.models()
        return any(m.id == model for m in answer.models) if answer.current else None

    def is_configured(self, name: str) -> bool:
        """Whether `name` is a provider, deployment or route of the settings (not registered)."""
        return (name in self._providers and name not in self._registered) or name in self._routes

    def registered(self) -> list[str]:
        """The providers registered at run time, oldest first."""
        return list(self._registered)

    def add(self, name: str, provider: Provider) -> Provider | None:
        """Route requests naming `name` to `provider` (started by the caller) from now on;
        the default while none is configured and none was registered before it. The one
        registered under that name before, if any, is returned for the caller to close
        (its calls in flight go on); until then requests naming it still go to it."""
        if self.is_configured(name):
            raise ValueError(f"{name!r} is a configured provider")
        replaced = self._providers.get(name)
        if replaced is not None:
            self._registered.remove(name)
            self._forget_listing(replaced)
        self._providers[name] = provider
        self._registered.append(name)
        self._listings[id(provider)] = self._listing(provider, in_process=False)
        if not self.default:
            self.default = name
        self.changed.set()
        return replaced

    def remove(self, name: str) -> Provider | None:
        """Stop routing to registered provider `name` (its calls in flight go on); the
        provider, for the caller to close. The next registered one becomes the default if
        it was, and none is configured."""
        if name not in self._registered:
            return None
        self._registered.remove(name)
        provider = self._providers.pop(name)
        self._forget_listing(provider)
        if self.default == name:
            self.default = self._configured_default or (self._registered[0] if self._registered else "")
        self.changed.set()
        return provider

    def _listing(self, provider: Provider, *, in_process: bool) -> ProviderListing:
        """How ListModels asks `provider`: an in-process one (or any, without listing
        settings) afresh and waited for; a remote one bounded and cached as they say."""
        listing = self._listing_settings
        if listing is None or in_process:
            return ProviderListing(provider, timeout_s=None, cache_s=0.0)
        return ProviderListing(provider, timeout_s=listing.timeout_s, cache_s=listing.cache_s)

    def _forget_listing(self, provider: Provider) -> None:
        listing = self._listings.pop(id(provider), None)
        if listing is not None:
            listing.cancel()

    def models_changed(self, provider: Provider) -> None:
        """`provider` loaded, unloaded, pulled or deleted a model: the next listing asks it."""
        listing = self._listings.get(id(provider))
        if listing is not None:
            listing.forget()

    async def __aenter__(self) -> Self:
        for provider in self._providers.values():
            await self._stack.enter_async_context(provider)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for listing in self._listings.values():  # asks still in flight end before their clients
                await listing.aclose()
        finally:
            await self._stack.aclose()
