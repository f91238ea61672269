"""What ListModels shows of one provider, without waiting on a provider that hangs.

The registry asks every provider at once, each through a `ProviderListing`. A remote
provider (its upstream's `/models`, `/api/tags`, ...) is waited for at most
`listing.timeout_s` from when it was asked, and its answer is reused for
`listing.cache_s`. One that has not answered by then contributes what it listed last, or
only its configured default model if it never answered, every model `loaded: false`; its
ask goes on in the background (one at a time, ended by the provider's own `timeout_s`),
so a later listing does not ask again but uses what it brings. Until the provider answers
within the bound again, what it contributes stays marked so. Both ends of such an outage
are logged once: a warning when it first misses the bound (or fails), a line when it
answers in time again.

An in-process provider (llamacpp) is asked every time and waited for: a model just
pulled, loaded or unloaded shows at once. Model administration forgets a provider's
cached answer (`forget`), so Ollama's loads and pulls show at once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from llmservice.kernel.provider import Provider
from llmservice.kernel.types import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listed:
    models: list[ModelInfo]
    current: bool  # the provider answered within the bound (now, or for the answer reused)


class ProviderListing:
    def __init__(
        self,
        provider: Provider,
        *,
        timeout_s: float | None,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`timeout_s`: how long a caller waits for the provider (None: until it answers);
        `cache_s`: how long its answer is reused (0: never)."""
        self.provider = provider
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._answer: list[ModelInfo] | None = None  # the last one it gave
        self._answered_at = 0.0
        self._asking: asyncio.Task[list[ModelInfo] | None] | None = None
        self._running: set[asyncio.Task[list[ModelInfo] | None]] = set()  # that one, and any forgotten
        self._asked_at = 0.0
        self._generation = 0  # forget() starts a new one: an ask from before it is not kept
        self._out = False  # it missed the bound or failed, and has not answered in time since

    async def models(self) -> Listed:
        """Its models: the answer it gave within cache_s, else one now, else (past the
        bound, or when asking it failed) its fallback, marked not loaded."""
        now = self._clock()
        if self._answer is not None and now - self._answered_at < self._cache_s:
            return self._listed(self._answer)
        task = self._asking
        if task is None:
            task = self._asking = asyncio.create_task(
                self._ask(), name=f"list models of {self.provider.name}"
            )
            self._asked_at = now
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._timeout_s is None:
            answer = await asyncio.shield(task)  # a caller that leaves does not end the ask
        else:
            left = self._asked_at + self._timeout_s - now
            done, _ = await asyncio.wait({task}, timeout=max(left, 0.0))
            if not done:
                self._missed(f"did not list its models within {self._timeout_s:g} s (listing.timeout_s)")
                return self._listed(None)
            answer = task.result()
        return self._listed(answer)

    def forget(self) -> None:
        """Its models changed: the next listing asks again (what it listed last stays its
        fallback)."""
        self._answered_at = -math.inf
        self._asking = None  # an ask in flight finishes, unheeded
        self._generation += 1

    def cancel(self) -> None:
        """End the asks in flight, without waiting for them (the provider is going away)."""
        self._asking = None
        for task in list(self._running):
            task.cancel()

    async def aclose(self) -> None:
        """End the asks in flight (the service is stopping)."""
        running = list(self._running)
        self.cancel()
        for task in running:
            with contextlib.suppress(BaseException):
                await task

    async def _ask(self) -> list[ModelInfo] | None:
        generation, asked_at = self._generation, self._clock()
        try:
            answer = await self.provider.list_models()
        except Exception as exc:  # one provider's failure must not fail the listing
            if generation == self._generation:
                self._missed(f"failed to list its models ({type(exc).__name__}: {exc})")
            return None
        finally:
            if generation == self._generation:
                self._asking = None
        if generation != self._generation:
            return answer  # asked before forget(): the callers waiting get it, nobody keeps it
        self._answer, self._answered_at = answer, self._clock()
        in_time = self._timeout_s is None or self._answered_at - asked_at <= self._timeout_s
        if in_time and self._out:
            self._out = False
            log.warning("provider %s lists its models again", self.provider.name)
        return answer

    def _missed(self, why: str) -> None:
        if self._out:
            return  # logged when the outage began
        self._out = True
        shown = (
            "what it listed last" if self._answer else f"its default model {self.provider.default_model!r}"
        )
        log.warning(
            "provider %s %s: ListModels shows %s, not loaded, until it answers in time",
            self.provider.name,
            why,
            shown,
        )

    def _listed(self, answer: list[ModelInfo] | None) -> Listed:
        if answer is not None and not self._out:
            return Listed(answer, True)
        known = answer or self._answer or [ModelInfo(self.provider.default_model, self.provider.name)]
        return Listed([replace(m, loaded=False) for m in known], False)
