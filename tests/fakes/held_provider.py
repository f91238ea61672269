"""A provider whose start waits for the test: health stays NOT_SERVING until it is released."""

from __future__ import annotations

import asyncio

from .one_model import OneModel


class HeldAtStart(OneModel):
    name = "held"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
