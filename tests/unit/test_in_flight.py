"""InFlight: the calls a servicer has under way, for draining."""

from __future__ import annotations

import asyncio

import pytest

from llmservice.grpc_api.in_flight import InFlight
from llmservice.kernel.errors import Unavailable


async def test_idle_waits_for_every_call_and_draining_refuses_new_ones() -> None:
    calls = InFlight("shutting down")
    await asyncio.wait_for(calls.wait_idle(), 1)  # none yet
    with calls.track():
        with calls.track():
            calls.start_draining()
            waiting = asyncio.ensure_future(calls.wait_idle())
            with pytest.raises(Unavailable, match="shutting down"), calls.track():
                pass
        await asyncio.sleep(0)
        assert not waiting.done()  # one call still runs
    await asyncio.wait_for(waiting, 1)


async def test_a_call_that_fails_still_ends() -> None:
    calls = InFlight("x")
    with pytest.raises(RuntimeError), calls.track():
        raise RuntimeError("boom")
    await asyncio.wait_for(calls.wait_idle(), 1)
