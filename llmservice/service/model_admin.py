"""Model administration for operators: load, unload (or swap the default), pull and delete.

Only an admin principal may do these (in open local mode everyone is `local`, an admin);
anyone else gets PermissionDenied. Which provider a call is about is resolved by the
registry as for chat; what load or pull means is the provider's own business (the local
engine's model pool; Ollama's pull and keep-alive).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmservice.kernel.errors import InvalidRequest, PermissionDenied
from llmservice.kernel.types import PullProgress
from llmservice.service.auth import LOCAL, Principal

if TYPE_CHECKING:
    from llmservice.kernel.provider import Provider
    from llmservice.service.registry import ProviderRegistry


@dataclass(frozen=True, slots=True)
class Loaded:
    provider: str
    model: str
    was_loaded: bool  # it was loaded before this call
    is_default: bool


class ModelAdmin:
    """The operations behind ModelAdminService, on the registry's providers."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry

    async def load(
        self, provider: str, model: str, *, make_default: bool = False, principal: Principal = LOCAL
    ) -> Loaded:
        found, model = self._provider(principal, provider, model)
        try:
            fresh = await found.load_model(model, make_default=make_default)
        finally:
            self._registry.models_changed(found)
        return Loaded(found.name, model, not fresh, found.default_model == model)

    async def unload(self, provider: str, model: str, principal: Principal = LOCAL) -> tuple[str, str, bool]:
        """(provider, model, whether it was loaded)."""
        found, model = self._provider(principal, provider, model)
        try:
            return found.name, model, await found.unload_model(model)
        finally:
            self._registry.models_changed(found)

    def pull(
        self, provider: str, source: str, *, sha256: str = "", name: str = "", principal: Principal = LOCAL
    ) -> tuple[str, AsyncGenerator[PullProgress]]:
        """The provider's name and the pull's progress; the last step's status is "success"."""
        if not source:
            raise InvalidRequest("source", "name the model to pull (a URL, hf://owner/repo/file.gguf, ...)")
        found, _ = self._provider(principal, provider, source)
        return found.name, self._pulled(found, found.pull_model(source, sha256=sha256, name=name))

    async def delete(self, provider: str, model: str, principal: Principal = LOCAL) -> tuple[str, str]:
        found, model = self._provider(principal, provider, model)
        try:
            await found.delete_model(model)
        finally:
            self._registry.models_changed(found)
        return found.name, model

    async def _pulled(
        self, provider: Provider, steps: AsyncGenerator[PullProgress]
    ) -> AsyncGenerator[PullProgress]:
        """The pull's steps; once it ends, however it ends, ListModels asks the provider again."""
        try:
            async with contextlib.aclosing(steps) as pulling:
                async for step in pulling:
                    yield step
        finally:
            self._registry.models_changed(provider)

    def _provider(self, principal: Principal, provider: str, model: str) -> tuple[Provider, str]:
        if not principal.admin:
            raise PermissionDenied(
                f"principal {principal.name!r} may not administer models (auth.principals.<name>.admin)"
            )
        return self._registry.resolve(provider, model)
