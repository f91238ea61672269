"""Providers registered at run time: a plugin announces itself, keeps a lease, and is
routed to by name until it deregisters or the lease lapses.

Registering is an operator's action (an admin principal). The target is vetted as
every outbound address is (kernel.url_policy: no metadata endpoint; loopback and private
networks only when registry.allowed_hosts lists them), then connected to and started
before the answer: a plugin that cannot be reached is refused now, not at its first
request. A lapsed lease is dropped within a second; a provider dropped or replaced
(re-registered under its name) finishes its calls in flight as it closes.

What a registration becomes is the composition root's business (`factory`: in `app`,
a `grpc` provider in front of the target); this module knows only the kernel's Provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from llmservice.kernel.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from llmservice.kernel.provider import Provider
from llmservice.kernel.url_policy import UrlPolicy
from llmservice.service.auth import LOCAL, Principal
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import RegistrySettings

log = logging.getLogger(__name__)

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
SERVICES = ("", "llmservice.v1", "protocol")
SWEEP_S = 0.25  # how often lapsed leases are looked for: a lapsed one goes within this
CLOSE_S = 5.0  # how long the service, stopping, gives each registered provider to close


@dataclass(frozen=True)
class Announcement:
    """What a plugin says of itself when it registers."""

    name: str
    target: str  # host:port
    models: tuple[str, ...] = ()  # its default first; empty: what it lists
    service: str = ""  # "llmservice.v1", "protocol"; "": ask its reflection
    tls: bool = False
    api_key: str = field(default="", repr=False)
    lease_s: float = 0.0  # 0: registry.lease_s


BackendFactory = Callable[[Announcement, float], Provider]  # (what was announced, connect timeout)


@dataclass
class Lease:
    id: str
    announcement: Announcement
    provider: Provider
    length_s: float
    expires_at: float

    @property
    def name(self) -> str:
        return self.announcement.name


@dataclass(frozen=True)
class ProviderView:
    """One provider requests may name, as ListProviders shows it."""

    name: str
    registered: bool
    models: tuple[str, ...]
    is_default: bool
    health: bool | None  # None: not watched (found out when called)
    target: str = ""
    service: str = ""
    lease_left_s: float = 0.0


class Registrations:
    """The leases of ProviderRegistryService, kept in `registry`."""

    def __init__(
        self,
        registry: ProviderRegistry,
        settings: RegistrySettings,
        factory: BackendFactory,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._factory = factory
        self._clock = clock
        self._policy = UrlPolicy(settings.allowed_hosts, "registry.allowed_hosts")
        self._leases: dict[str, Lease] = {}  # by lease id
        self._by_name: dict[str, Lease] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one registration at a time: a name is never started twice

    async def register(self, announced: Announcement, principal: Principal = LOCAL) -> Lease:
        """Vet, connect to and start the announced provider, and route to it; its lease."""
        _admin(principal, "register a provider")
        length = self._length(announced.lease_s)
        self._vet_fields(announced)
        await self._policy.check(f"http://{announced.target}", "target")
        async with self._lock:
            if announced.name not in self._by_name and len(self._by_name) >= self._settings.max_registered:
                raise ResourceExhausted(
                    f"{len(self._by_name)} providers are registered, the most registry.max_registered allows"
                )
            provider = self._factory(announced, self._settings.connect_timeout_s)
            try:
                await provider.start()  # what it opened before failing (its channel) is closed too
                self._vet_started(announced, provider)
                replaced = self._registry.add(announced.name, provider)
            except BaseException:
                await provider.aclose()
                raise
            lease = Lease(secrets.token_urlsafe(18), announced, provider, length, self._clock() + length)
            old = self._by_name.pop(announced.name, None)
            if old is not None:
                del self._leases[old.id]
            self._leases[lease.id] = lease
            self._by_name[announced.name] = lease
        if replaced is not None:
            self._close_later(replaced, f"provider {announced.name}: re-registered at {announced.target}")
        log.info(
            "provider %s registered at %s (%s, lease %gs, models %s)",
            announced.name,
            announced.target,
            announced.service or "detected",
            length,
            ", ".join(announced.models) or "as listed",
        )
        return lease

    def renew(self, lease_id: str, principal: Principal = LOCAL) -> float:
        """Extend the lease by its length again; the seconds it now has."""
        _admin(principal, "renew a lease")
        lease = self._live(lease_id)
        lease.expires_at = self._clock() + lease.length_s
        return lease.length_s

    def deregister(self, lease_id: str = "", name: str = "", principal: Principal = LOCAL) -> str:
        """End a lease now (by its id, or the provider's name); the provider's name."""
        _admin(principal, "deregister a provider")
        if lease_id:
            lease = self._live(lease_id)
        elif name:
            found = self._by_name.get(name)
            if found is None:
                raise NotFound(f"provider {name!r} is not registered; registered: {self._names()}")
            lease = found
        else:
            raise InvalidRequest("lease_id", "name the lease to end (or the provider, in `name`)")
        self._drop(lease, "deregistered", quiet=True)
        return lease.name

    def leases(self) -> list[Lease]:
        """The live leases, oldest registration first."""
        return list(self._by_name.values())

    def left_s(self, lease: Lease) -> float:
        return max(lease.expires_at - self._clock(), 0.0)

    def providers(self, principal: Principal = LOCAL) -> list[ProviderView]:
        """Every provider requests may name: configured ones first, then the registered,
        oldest first."""
        _admin(principal, "list the providers")
        default = self._registry.default
        views = []
        for name, provider in self._registry.named():
            lease = self._by_name.get(name)
            if lease is not None and lease.provider is provider:
                continue
            views.append(
                ProviderView(name, False, (provider.default_model,), name == default, provider.health())
            )
        for lease in self.leases():
            provider = lease.provider
            models = lease.announcement.models or (provider.default_model,)
            service = getattr(provider, "service", "").removesuffix(".LLMService")
            views.append(
                ProviderView(
                    lease.name,
                    True,
                    models,
                    lease.name == default,
                    provider.health(),
                    lease.announcement.target,
                    service,
                    self.left_s(lease),
                )
            )
        return views

    def sweep(self) -> None:
        """Drop every lease that has lapsed."""
        now = self._clock()
        for lease in [lease for lease in self._leases.values() if lease.expires_at <= now]:
            self._drop(lease, _lapsed(lease))

    async def __aenter__(self) -> Self:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="provider leases")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._closing):  # providers dropped before: the calls in flight were drained
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        leases = list(self._leases.values())
        for lease in leases:
            self._forget(lease)
        closing = [asyncio.wait_for(lease.provider.aclose(), CLOSE_S) for lease in leases]
        outcomes = await asyncio.gather(*closing, return_exceptions=True)
        for lease, outcome in zip(leases, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("provider %s: closing it failed (%r)", lease.name, outcome)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep()

    def _live(self, lease_id: str) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None or lease.expires_at <= self._clock():
            if lease is not None:
                self._drop(lease, _lapsed(lease))
            raise NotFound("the lease is unknown or has lapsed (the provider was dropped): register again")
        return lease

    def _drop(self, lease: Lease, why: str, *, quiet: bool = False) -> None:
        """End `lease`; its provider closes once its calls in flight are done."""
        provider = self._forget(lease)
        if provider is not None:
            (log.info if quiet else log.warning)("provider %s dropped: %s", lease.name, why)
            self._close_later(provider, f"provider {lease.name}: {why}")

    def _forget(self, lease: Lease) -> Provider | None:
        """Stop routing to `lease`'s provider; the provider, for the caller to close."""
        self._leases.pop(lease.id, None)
        if self._by_name.get(lease.name) is lease:
            del self._by_name[lease.name]
        return self._registry.remove(lease.name)

    def _close_later(self, provider: Provider, why: str) -> None:
        """Close `provider` once its calls in flight are done (a task: nobody waits on it)."""

        async def close() -> None:
            try:
                await provider.aclose()
            except Exception:
                log.exception("%s; closing it failed", why)

        task = asyncio.create_task(close(), name=f"close {provider.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _length(self, asked: float) -> float:
        if math.isnan(asked) or asked < 0:
            raise InvalidRequest("lease_s", f"{asked:g} is not a number of seconds; 0 asks for the default")
        if asked == 0:
            return self._settings.lease_s
        return min(max(asked, 1.0), self._settings.max_lease_s)

    def _vet_fields(self, a: Announcement) -> None:
        if not NAME.fullmatch(a.name):
            raise InvalidRequest(
                "name",
                f"{a.name!r} is not a provider name: 1 to 63 of a-z, 0-9, '_', '-', '.', "
                "starting with a letter or digit",
            )
        if self._registry.is_configured(a.name):
            raise AlreadyExists(f"provider {a.name!r} is configured here; register under another name")
        _host_port(a.target)
        if a.service not in SERVICES:
            raise InvalidRequest(
                "service", f"{a.service!r}: say llmservice.v1 or protocol, or leave it empty"
            )
        for i, model in enumerate(a.models):
            if not model.strip() or len(model) > 256:
                raise InvalidRequest(f"models[{i}]", "a model id is 1 to 256 characters, not blank")
        if len(set(a.models)) != len(a.models):
            raise InvalidRequest("models", "a model is named twice")
        if a.service == "protocol" and not a.models:
            raise InvalidRequest(
                "models", "a protocol.LLMService plugin must name its models: it has no ListModels"
            )

    def _vet_started(self, a: Announcement, provider: Provider) -> None:
        if not provider.default_model:
            raise InvalidRequest(
                "models",
                f"{a.target} names no model: a protocol.LLMService plugin has no ListModels, "
                "so its registration must name its models",
            )

    def _names(self) -> str:
        return ", ".join(sorted(self._by_name)) or "none"


def _lapsed(lease: Lease) -> str:
    return f"its lease lapsed (no renewal in {lease.length_s:g}s)"


def _admin(principal: Principal, what: str) -> None:
    if not principal.admin:
        raise PermissionDenied(f"only an admin may {what}; {principal.name} is not one")


def _host_port(target: str) -> tuple[str, int]:
    """host and port of `target` (host:port, [v6]:port); InvalidRequest naming `target` if not one."""
    host, sep, port = target.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    well_formed = sep and host and (bracketed or ":" not in host) and not any(c in host for c in "/@ ")
    if not well_formed or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidRequest("target", f"{target!r} is not host:port (e.g. 10.0.0.7:50051, [::1]:50051)")
    return host, int(port)
