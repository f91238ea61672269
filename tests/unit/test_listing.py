"""ListModels with a provider that hangs or fails: the providers are asked at once, a remote
one waited for at most listing.timeout_s and its answer reused for listing.cache_s, the
local one asked every time; a route is described from its deployments' answers; an outage
is logged once; a /llmchat connect asks only the provider it names (service/listing.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from llmservice.kernel.errors import InvalidRequest, NotFound, Unavailable
from llmservice.kernel.types import Capabilities, ModelInfo
from llmservice.service.auth import LOCAL, Principal
from llmservice.service.core import LLMCore
from llmservice.service.model_admin import ModelAdmin
from llmservice.service.registry import ProviderRegistry
from llmservice.service.routing import FallbackRoute
from llmservice.service.sessions.config import ServerConfig
from llmservice.service.sessions.manager import SessionManager
from llmservice.service.sessions.records import LLMChoice
from llmservice.service.settings import CacheSettings, ListingSettings, LLMChatSettings

from ..fakes.one_model import OneModel

BOUND_S = 0.3
TOOLS = Capabilities(streaming=True, tools=True)


class Listing(OneModel):
    """Lists `ids` after `delay_s`; while `gate` is set, not before it is; with `fails`, raises."""

    def __init__(self, name: str, ids: tuple[str, ...] = ("m",), delay_s: float = 0.0) -> None:
        self.name = name
        self.ids = ids
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None
        self.fails = False
        self.asked = 0

    async def list_models(self) -> list[ModelInfo]:
        self.asked += 1
        await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        if self.fails:
            raise RuntimeError("the upstream's model list is not JSON")
        return [ModelInfo(i, self.name, capabilities=TOOLS) for i in self.ids]

    async def load_model(self, model: str, *, make_default: bool = False) -> bool:
        return True


def hung(name: str) -> Listing:
    provider = Listing(name)
    provider.gate = asyncio.Event()  # never set
    return provider


def registry(
    *providers: Listing, cache_s: float = 30.0, routes: dict[str, list[str]] | None = None
) -> ProviderRegistry:
    by_name = {p.name: p for p in providers}
    return ProviderRegistry(
        by_name,
        providers[0].name,
        {
            model: FallbackRoute(model, [by_name[m] for m in members], cooldown_s=30)
            for model, members in (routes or {}).items()
        },
        listing=ListingSettings(timeout_s=BOUND_S, cache_s=cache_s),
        local=["local"],
    )


async def timed_listing(reg: ProviderRegistry) -> tuple[dict[tuple[str, str], ModelInfo], float]:
    start = time.monotonic()
    models = await reg.list_models()
    return {(m.provider, m.id): m for m in models}, time.monotonic() - start


async def test_providers_are_asked_at_once_and_a_hung_one_for_the_bound_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    local, slow, stuck = Listing("local", delay_s=0.1), Listing("slow", delay_s=0.2), hung("stuck")
    reg = registry(local, slow, stuck, routes={"r": ["slow", "stuck"]})
    async with reg:
        first, took = await timed_listing(reg)
        again, took_again = await timed_listing(reg)
    assert BOUND_S <= took < BOUND_S + 0.15  # not 0.1 + 0.2 + the bound: all at once
    assert first[("local", "m")].is_default
    assert first[("local", "m")].loaded
    assert first[("slow", "m")].loaded
    # The hung one shows its default model, not loaded; the route is there, described from
    # what the listing got of its deployments (nothing known of the hung one's default).
    assert first[("stuck", "m")].loaded is False
    assert first[("route", "r")].capabilities == Capabilities()
    # Its ask is still in flight: the next listing does not wait for it again, nor ask again.
    assert took_again < BOUND_S - 0.1  # the local one's 0.1 s
    assert not again[("stuck", "m")].loaded
    assert (local.asked, slow.asked, stuck.asked) == (2, 1, 1)  # the local one every time
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "provider stuck did not list its models within 0.3 s (listing.timeout_s): "
        "ListModels shows its default model 'm', not loaded, until it answers in time"
    ]


async def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    local, flaky = Listing("local"), Listing("flaky", ids=("m", "other"))
    reg = registry(local, flaky, routes={"r": ["flaky"]})
    async with reg:
        answered, _ = await timed_listing(reg)
        flaky.gate = asyncio.Event()
        reg.models_changed(flaky)  # ask it again
        during = [(await timed_listing(reg))[0] for _ in range(3)]
        flaky.gate.set()  # the ask in flight answers, late; that answer is reused
        await asyncio.sleep(0.05)
        late, _ = await timed_listing(reg)
        reg.models_changed(flaky)
        flaky.fails = True
        failed, _ = await timed_listing(reg)
        flaky.fails = False
        back, _ = await timed_listing(reg)
    assert answered[("flaky", "other")].loaded
    assert answered[("route", "r")].capabilities == TOOLS
    for listed in during:  # what it listed last, not loaded; the route as it was
        assert {k: m.loaded for k, m in listed.items() if k[0] == "flaky"} == {
            ("flaky", "m"): False,
            ("flaky", "other"): False,
        }
        assert listed[("route", "r")].capabilities == TOOLS
    assert not late[("flaky", "other")].loaded  # answered, but not in time: still out
    assert flaky.asked == 4
    assert not failed[("flaky", "other")].loaded
    assert back[("flaky", "other")].loaded  # answered in time
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "provider flaky did not list its models within 0.3 s (listing.timeout_s): "
        "ListModels shows what it listed last, not loaded, until it answers in time",
        "provider flaky lists its models again",
    ]


async def test_a_provider_that_fails_to_list_costs_the_listing_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Listing("broken")
    broken.fails = True
    reg = registry(Listing("local"), broken)
    async with reg:
        listed, _ = await timed_listing(reg)
    assert listed[("local", "m")].loaded
    assert not listed[("broken", "m")].loaded
    assert "provider broken failed to list its models (RuntimeError: " in caplog.text


async def test_a_remote_answer_is_reused_for_cache_s_and_forgotten_when_its_models_change() -> None:
    local, remote = Listing("local"), Listing("remote")
    reg = registry(remote, local, cache_s=30)
    async with reg:
        for _ in range(3):
            await reg.list_models()
        assert (local.asked, remote.asked) == (3, 1)
        await ModelAdmin(reg).load("remote", "m")  # Ollama loading or pulling: shows at once
        await reg.list_models()
        assert remote.asked == 2
    short = Listing("remote")
    reg = registry(short, cache_s=0.1)
    async with reg:
        await reg.list_models()
        await asyncio.sleep(0.15)
        await reg.list_models()
    assert short.asked == 2


async def test_whether_a_provider_lists_a_model_is_unknown_while_it_hangs() -> None:
    stuck = hung("stuck")
    reg = registry(Listing("local", ids=("m", "second")), stuck)
    async with reg:
        assert await reg.lists("local", "second") is True
        assert await reg.lists("local", "third") is False
        assert await reg.lists("stuck", "m") is None
        assert await reg.lists("stuck", "anything") is None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def connect(sessions: SessionManager, principal: Principal, llm: LLMChoice) -> BaseException:
    """What a connect raised: an unreachable MCP server (Unavailable) once the LLM passed."""
    server = ServerConfig(url=f"http://127.0.0.1:{closed_port()}/mcp")
    with pytest.raises((Unavailable, NotFound, InvalidRequest)) as raised:
        await sessions.connect(principal, "u", server, llm)
    return raised.value


async def test_a_connect_asks_only_the_provider_it_names_and_only_for_a_named_model() -> None:
    local, stuck = Listing("local", ids=("m", "second")), hung("stuck")
    reg = registry(local, stuck)
    settings = LLMChatSettings(allowed_hosts=["127.0.0.1"])
    async with reg, SessionManager(LLMCore(reg), settings, CacheSettings()) as sessions:
        start = time.monotonic()
        for llm in (LLMChoice(), LLMChoice(provider="local"), LLMChoice(provider="stuck")):
            assert isinstance(await connect(sessions, LOCAL, llm), Unavailable)
        assert time.monotonic() - start < BOUND_S
        assert (local.asked, stuck.asked) == (0, 0)
        # A named model is looked up in that provider's list: refused if it does not list it,
        # taken at its word if it does not answer in time.
        assert isinstance(
            await connect(sessions, LOCAL, LLMChoice(provider="local", model="second")), Unavailable
        )
        missing = await connect(sessions, LOCAL, LLMChoice(provider="local", model="third"))
        assert isinstance(missing, InvalidRequest)
        assert missing.message == "llm.config.model: provider local has no model 'third'"
        assert isinstance(await connect(sessions, LOCAL, LLMChoice(provider="stuck", model="x")), Unavailable)
        assert (local.asked, stuck.asked) == (2, 1)
        # A model the caller may not use looks like one nobody has; with no provider named,
        # the first whose default model it may use.
        only_stuck = Principal("p", models=("stuck/*",))
        for llm in (LLMChoice(provider="local"), LLMChoice(provider="local", model="second")):
            assert isinstance(await connect(sessions, only_stuck, llm), NotFound)
        assert isinstance(await connect(sessions, only_stuck, LLMChoice()), Unavailable)
        nothing = await connect(sessions, Principal("q", models=("none",)), LLMChoice())
        assert isinstance(nothing, NotFound)
        assert nothing.message == "model 'default' not found"
