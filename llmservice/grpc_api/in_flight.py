"""The calls a servicer has under way, for draining: refused once it drains, awaited until none is left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from llmservice.kernel.errors import Unavailable


class InFlight:
    def __init__(self, refusal: str) -> None:
        """`refusal`: what a call that comes while draining is told (with UNAVAILABLE)."""
        self._refusal = refusal
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    def start_draining(self) -> None:
        """From now on, refuse new calls with UNAVAILABLE."""
        self._draining = True

    async def wait_idle(self) -> None:
        """Return once no tracked call is running."""
        await self._idle.wait()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """One call, for as long as the block runs; Unavailable once draining."""
        if self._draining:
            raise Unavailable(self._refusal)
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if not self._count:
                self._idle.set()
