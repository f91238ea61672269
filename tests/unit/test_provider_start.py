"""A provider whose start fails still closes what it opened (else an HTTP session is left to GC)."""

from __future__ import annotations

import pytest

from llmservice.kernel.errors import Unavailable

from ..fakes.one_model import OneModel


class FailsToStart(OneModel):
    name = "fails"

    def __init__(self) -> None:
        self.closed = False

    async def start(self) -> None:
        raise Unavailable("upstream refused the model list")

    async def aclose(self) -> None:
        self.closed = True


async def test_a_failed_start_closes_the_provider() -> None:
    provider = FailsToStart()
    with pytest.raises(Unavailable):
        async with provider:
            pass
    assert provider.closed
