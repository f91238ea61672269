"""Providers registered at run time: vetted, started, routed to by name, and dropped and
closed when their lease ends (service/registrations.py over service/registry.py)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmservice.kernel.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from llmservice.service.auth import Principal
from llmservice.service.registrations import Announcement, Registrations
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import RegistrySettings

from ..fakes.one_model import OneModel

PUBLIC = "8.8.8.8:50051"  # passes the URL policy; an IP literal resolves without any network
START = 1000.0


class Plugin(OneModel):
    """What the factory makes of an announcement: its first model is its default."""

    def __init__(self, announced: Announcement) -> None:
        self.name = announced.name
        self.announced = announced
        self.started = self.closed = False

    @property
    def default_model(self) -> str:
        return self.announced.models[0] if self.announced.models else ""

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True


class Unreachable(Plugin):
    async def start(self) -> None:
        self.started = True  # as a grpc backend opens its channel, then finds nothing answers
        raise Unavailable(f"nothing answered at {self.announced.target}")


@dataclass
class Rig:
    registry: ProviderRegistry
    registrations: Registrations
    now: list[float]
    made: list[Plugin] = field(default_factory=list)

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds


def rig(configured: str = "", kind: type[Plugin] = Plugin, **settings: Any) -> Rig:
    """Registrations over a registry with no provider, or one configured default."""
    providers = {}
    if configured:
        providers[configured] = local = OneModel()
        local.name = configured
    registry = ProviderRegistry(providers, configured)
    now = [START]
    made: list[Plugin] = []

    def factory(announced: Announcement, connect_timeout_s: float) -> Plugin:
        made.append(kind(announced))
        return made[-1]

    registrations = Registrations(registry, RegistrySettings(**settings), factory, clock=lambda: now[0])
    return Rig(registry, registrations, now, made)


def plugin(name: str = "a", target: str = PUBLIC, **fields: Any) -> Announcement:
    fields.setdefault("models", ("m1", "m2"))
    return Announcement(name, target, **fields)


async def settle() -> None:
    """Let the close tasks the registrations started run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_registered_provider_is_started_and_serves_requests_that_name_it() -> None:
    r = rig()
    await r.registrations.register(plugin("a"))
    [made] = r.made
    assert made.started
    assert r.registry.resolve("a", "") == (made, "m1")
    assert r.registry.resolve("a", "m2") == (made, "m2")


async def test_the_provider_list_shows_the_configured_ones_then_the_registered_with_their_leases() -> None:
    r = rig("local")
    await r.registrations.register(plugin("b", models=("x",), lease_s=30))
    await r.registrations.register(plugin("a", lease_s=60))
    r.advance(10)
    views = r.registrations.providers()
    assert [(v.name, v.registered, v.is_default) for v in views] == [
        ("local", False, True),
        ("b", True, False),
        ("a", True, False),
    ]
    assert (views[0].models, views[0].target) == (("m",), "")
    assert (views[1].models, views[1].target, views[1].lease_left_s) == (("x",), PUBLIC, 20.0)
    assert (views[2].models, views[2].lease_left_s) == (("m1", "m2"), 50.0)


async def test_without_a_configured_default_unnamed_requests_wait_for_the_first_registration() -> None:
    r = rig()
    with pytest.raises(Unavailable, match="register one"):
        r.registry.resolve("", "")
    await r.registrations.register(plugin("a"))
    await r.registrations.register(plugin("b"))
    assert r.registry.resolve("", "") == (r.made[0], "m1")
    assert [v.is_default for v in r.registrations.providers()] == [True, False]


async def test_the_oldest_registration_left_becomes_the_default_when_the_default_goes() -> None:
    r = rig()
    await r.registrations.register(plugin("a", lease_s=60))
    await r.registrations.register(plugin("b", lease_s=5))
    await r.registrations.register(plugin("c", lease_s=60))
    await r.registrations.register(plugin("d", lease_s=60))
    r.registrations.deregister(name="a")
    assert r.registry.default == "b"
    r.advance(6)
    r.registrations.sweep()
    assert r.registry.default == "c"
    assert r.registry.resolve("", "")[0] is r.made[2]
    r.registrations.deregister(name="c")
    r.registrations.deregister(name="d")
    with pytest.raises(Unavailable):
        r.registry.resolve("", "")


async def test_a_configured_default_stays_the_default_whatever_registers_or_leaves() -> None:
    r = rig("local")
    await r.registrations.register(plugin("a"))
    await r.registrations.register(plugin("b"))
    r.registrations.deregister(name="a")
    assert r.registry.default == "local"
    assert r.registry.resolve("", "")[0].name == "local"


async def test_only_an_admin_may_register_renew_deregister_or_list_providers() -> None:
    r = rig()
    lease = await r.registrations.register(plugin("a"))
    guest = Principal("guest")
    with pytest.raises(PermissionDenied, match="only an admin may register a provider; guest"):
        await r.registrations.register(plugin("b"), guest)
    with pytest.raises(PermissionDenied, match="renew"):
        r.registrations.renew(lease.id, guest)
    with pytest.raises(PermissionDenied, match="deregister"):
        r.registrations.deregister(lease.id, principal=guest)
    with pytest.raises(PermissionDenied, match="list"):
        r.registrations.providers(guest)
    assert [x.name for x in r.registrations.leases()] == ["a"]
    assert len(r.made) == 1


@pytest.mark.parametrize("name", ["Upper", "", "a" * 64, "-lead", "with space", "a/b"])
async def test_a_malformed_name_is_refused_naming_the_field(name: str) -> None:
    r = rig()
    with pytest.raises(InvalidRequest, match="is not a provider name") as refused:
        await r.registrations.register(plugin(name))
    assert refused.value.field == "name"
    assert r.made == []


async def test_the_longest_name_and_one_of_every_allowed_character_are_accepted() -> None:
    r = rig()
    await r.registrations.register(plugin("a" * 63))
    await r.registrations.register(plugin("0a_b.c-d"))
    assert r.registry.registered() == ["a" * 63, "0a_b.c-d"]


async def test_the_name_of_a_configured_provider_cannot_be_registered() -> None:
    r = rig("local")
    with pytest.raises(AlreadyExists, match="'local' is configured"):
        await r.registrations.register(plugin("local"))
    assert r.made == []


@pytest.mark.parametrize(
    "target",
    [
        *["nohost", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:70000", "1.2.3.4:", "::1:50051", "a/b:1", "u@h:1"],
        "8.8.8.8:\u00b2",  # a digit to str.isdigit(), not to int()
        "8.8.8.8:\u0665\u0660\u0660\u0665\u0661",  # Arabic-Indic digits
    ],
)
async def test_a_target_that_is_not_host_and_port_is_refused(target: str) -> None:
    r = rig(allowed_hosts=["::1"])
    with pytest.raises(InvalidRequest, match="is not host:port") as refused:
        await r.registrations.register(plugin(target=target))
    assert refused.value.field == "target"
    assert r.made == []


async def test_a_bracketed_ipv6_target_is_accepted_when_allowed_hosts_lists_it() -> None:
    r = rig(allowed_hosts=["::1"])
    await r.registrations.register(plugin(target="[::1]:50051"))
    assert r.made[0].announced.target == "[::1]:50051"


async def test_loopback_is_refused_unless_allowed_hosts_lists_it() -> None:
    with pytest.raises(PermissionDenied, match=r"target: 127\.0\.0\.1 .*registry\.allowed_hosts"):
        await rig().registrations.register(plugin(target="127.0.0.1:50051"))
    with pytest.raises(PermissionDenied, match=r"registry\.allowed_hosts"):
        await rig().registrations.register(plugin(target="10.0.0.7:50051"))
    allowed = rig(allowed_hosts=["127.0.0.1"])
    await allowed.registrations.register(plugin(target="127.0.0.1:50051"))
    assert allowed.registry.resolve("a", "")[0] is allowed.made[0]


async def test_the_metadata_address_is_refused_even_inside_an_allowed_network() -> None:
    r = rig(allowed_hosts=["169.254.0.0/16"])
    with pytest.raises(PermissionDenied, match="metadata endpoint"):
        await r.registrations.register(plugin(target="169.254.169.254:80"))
    await r.registrations.register(plugin(target="169.254.1.1:80"))
    assert [p.announced.target for p in r.made] == ["169.254.1.1:80"]


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        ({"service": "grpc"}, "service", "say llmservice.v1 or protocol"),
        ({"service": "protocol", "models": ()}, "models", "must name its models"),
        ({"models": ("m1", "m1")}, "models", "named twice"),
        ({"models": ("m1", " ")}, "models[1]", "not blank"),
        ({"models": ("m" * 257,)}, "models[0]", "1 to 256"),
        ({"lease_s": -1.0}, "lease_s", "-1 is not a number of seconds"),
        ({"lease_s": math.nan}, "lease_s", "nan is not a number of seconds"),
    ],
)
async def test_an_announcement_that_does_not_add_up_is_refused(
    fields: dict[str, Any], where: str, says: str
) -> None:
    r = rig()
    with pytest.raises(InvalidRequest, match=says) as refused:
        await r.registrations.register(plugin(**fields))
    assert refused.value.field == where
    assert r.made == []


async def test_a_full_registry_refuses_a_new_name_but_takes_a_re_registration() -> None:
    r = rig(max_registered=2)
    await r.registrations.register(plugin("a"))
    await r.registrations.register(plugin("b"))
    with pytest.raises(ResourceExhausted, match=r"2 providers are registered.*registry\.max_registered"):
        await r.registrations.register(plugin("c"))
    await r.registrations.register(plugin("a", models=("new",)))
    assert r.registry.registered() == ["b", "a"]
    assert r.registry.resolve("a", "")[1] == "new"


async def test_a_provider_that_names_no_model_once_started_is_refused_and_closed() -> None:
    r = rig()
    with pytest.raises(InvalidRequest, match=r"8\.8\.8\.8:50051 names no model") as refused:
        await r.registrations.register(plugin(models=()))
    assert refused.value.field == "models"
    [made] = r.made
    assert made.started
    assert made.closed
    assert r.registrations.leases() == []
    with pytest.raises(NotFound):
        r.registry.resolve("a", "")
    with pytest.raises(Unavailable):
        r.registry.resolve("", "")


async def test_a_provider_whose_start_fails_is_refused_and_closed() -> None:
    r = rig(kind=Unreachable)
    with pytest.raises(Unavailable, match=r"nothing answered at 8\.8\.8\.8:50051"):
        await r.registrations.register(plugin())
    assert r.registrations.leases() == []
    assert r.made[0].closed


@pytest.mark.parametrize(("asked", "granted"), [(0.0, 10.0), (0.2, 1.0), (42.0, 42.0), (10_000.0, 300.0)])
async def test_a_lease_gets_the_default_length_at_most_the_longest_and_at_least_a_second(
    asked: float, granted: float
) -> None:
    r = rig()
    lease = await r.registrations.register(plugin(lease_s=asked))
    assert (lease.length_s, lease.expires_at) == (granted, START + granted)
    assert r.registrations.providers()[0].lease_left_s == granted


async def test_renewing_extends_the_lease_by_its_length_from_now() -> None:
    r = rig()
    lease = await r.registrations.register(plugin(lease_s=20))
    r.advance(15)
    assert r.registrations.renew(lease.id) == 20.0
    assert lease.expires_at == START + 35
    r.advance(15)  # past the first lease's end, within the renewed one
    r.registrations.sweep()
    assert r.registry.resolve("a", "")[0] is r.made[0]


async def test_a_lapsed_lease_cannot_be_renewed_and_its_provider_is_dropped_and_closed() -> None:
    r = rig()
    lease = await r.registrations.register(plugin(lease_s=20))
    r.advance(20)
    with pytest.raises(NotFound, match="register again"):
        r.registrations.renew(lease.id)
    with pytest.raises(NotFound, match="'a' is not configured"):
        r.registry.resolve("a", "")
    await settle()
    assert r.made[0].closed
    assert r.registrations.leases() == []


async def test_sweeping_drops_the_lapsed_leases_only() -> None:
    r = rig()
    await r.registrations.register(plugin("short", lease_s=5))
    await r.registrations.register(plugin("long", lease_s=50))
    r.advance(5)
    r.registrations.sweep()
    await settle()
    assert [x.name for x in r.registrations.leases()] == ["long"]
    assert r.registry.registered() == ["long"]
    assert [p.closed for p in r.made] == [True, False]


async def test_re_registering_a_name_replaces_its_provider_and_ends_its_old_lease() -> None:
    r = rig()
    old = await r.registrations.register(plugin("a", models=("old",)))
    new = await r.registrations.register(plugin("a", "8.8.4.4:50051", models=("new",)))
    assert old.id != new.id
    with pytest.raises(NotFound):
        r.registrations.renew(old.id)
    await settle()
    assert [p.closed for p in r.made] == [True, False]
    assert r.registry.resolve("a", "") == (r.made[1], "new")
    assert r.registry.default == "a"
    assert [(v.name, v.target) for v in r.registrations.providers()] == [("a", "8.8.4.4:50051")]


async def test_deregistering_by_lease_id_or_by_name_stops_routing_and_closes_the_provider() -> None:
    r = rig()
    lease = await r.registrations.register(plugin("a"))
    await r.registrations.register(plugin("b"))
    assert r.registrations.deregister(lease.id) == "a"
    assert r.registrations.deregister(name="b") == "b"
    await settle()
    assert [p.closed for p in r.made] == [True, True]
    for name in ("a", "b"):
        with pytest.raises(NotFound):
            r.registry.resolve(name, "")
    with pytest.raises(NotFound, match="register again"):
        r.registrations.renew(lease.id)


async def test_deregistering_must_name_a_registered_lease_or_provider() -> None:
    r = rig("local")
    with pytest.raises(InvalidRequest) as refused:
        r.registrations.deregister()
    assert refused.value.field == "lease_id"
    with pytest.raises(NotFound, match="'local' is not registered; registered: none"):
        r.registrations.deregister(name="local")
    with pytest.raises(NotFound):
        r.registrations.deregister("no-such-lease")
    assert r.registry.resolve("", "")[0].name == "local"


async def test_leaving_the_context_closes_every_registered_provider() -> None:
    r = rig()
    async with r.registrations as registrations:
        await registrations.register(plugin("a"))
        await registrations.register(plugin("b"))
    assert [p.closed for p in r.made] == [True, True]
    assert r.registry.registered() == []
