"""Providers registered at run time (ProviderRegistryService): the example echo plugin
(examples/echo_plugin, a process of its own speaking the published protocol.LLMService)
and a second llmservice on the bundled model register with a gateway that has no provider
of its own, are routed to by `provider`, stream their token signals through both hops, are
dropped when their lease lapses and come back when they register again. Registering needs
the admin key and a target the allowed-hosts policy admits; a plugin killed mid-stream is
UNAVAILABLE to its caller at once and NOT_SERVING in health.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import provider_registry_pb2 as reg_pb
from llmservice._pb.llmservice.v1 import provider_registry_pb2_grpc as reg_grpc
from llmservice.app import running_service
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..servers import PluginProcess, echo_plugin, free_port, llmservice_serve
from .conftest import Service
from .test_grpc_backend import greedy, without_timing

OPS, APP = "ops-key-0123", "app-key-4567"
Metadata = tuple[tuple[str, str], ...]
WORDS = "the quick brown fox jumps over the lazy dog"


def key(value: str) -> Metadata:
    return (("authorization", f"Bearer {value}"),)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Gateway:
    def __init__(self, target: str, channel: grpc.aio.Channel) -> None:
        self.target = target
        self.llm = pb_grpc.LLMServiceStub(channel)
        self.registry = reg_grpc.ProviderRegistryServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    async def providers(self) -> dict[str, reg_pb.RegisteredProvider]:
        reply = await self.registry.ListProviders(reg_pb.ListProvidersRequest(), metadata=key(OPS))
        return {p.name: p for p in reply.providers}

    async def health_of(self, provider: str) -> Any:
        reply = await self.health.List(health_pb2.HealthListRequest(), metadata=key(OPS))
        entry = reply.statuses.get(f"provider/{provider}")
        return None if entry is None else entry.status

    async def until(self, predicate: Any, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while not await predicate():  # noqa: ASYNC110 -- the state is the other process's
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def gateway(**settings: Any) -> AsyncIterator[Gateway]:
    """An llmservice with no provider of its own (provider = ""), keys on, loopback plugins allowed."""
    tree: dict[str, Any] = {
        "server": {"grpc_port": 0},
        "provider": "",
        "auth": {
            "principals": {"ops": {"key_sha256": sha(OPS), "admin": True}, "app": {"key_sha256": sha(APP)}}
        },
        "registry": {"allowed_hosts": ["127.0.0.1"]},
    }
    tree.update(settings)
    config = Settings.model_validate(tree)
    async with (
        running_service(config, registry=ProviderRegistry.from_settings(config)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield Gateway(f"127.0.0.1:{server.port}", channel)


@contextlib.asynccontextmanager
async def running_plugin(*args: str, admin_key: str = "") -> AsyncIterator[PluginProcess]:
    """The echo plugin, started and stopped off the event loop: the gateway it registers
    with (and deregisters from as it stops) runs on this loop."""
    started = echo_plugin(*args, admin_key=admin_key)
    process = await asyncio.to_thread(started.__enter__)
    try:
        yield process
    finally:
        await asyncio.to_thread(started.__exit__, None, None, None)


def echo(words: str = WORDS, **fields: Any) -> pb.LLMChatRequest:
    return pb.LLMChatRequest(messages=[pb.ChatMessage(role="user", content=words)], **fields)


async def test_a_plugin_registers_and_streams_its_signals_through_both_hops() -> None:
    async with gateway() as gw:
        with pytest.raises(grpc.aio.AioRpcError) as before:  # nothing to route to yet
            await gw.llm.Chat(echo(), metadata=key(APP))
        async with running_plugin("--register", gw.target, "--name", "echo", admin_key=OPS) as plugin:
            assert plugin.said.startswith("echo_plugin: registered as echo"), plugin.said
            chunks = [c async for c in gw.llm.StreamChat(echo(provider="echo"), metadata=key(APP))]
            reply = await gw.llm.Chat(echo(), metadata=key(APP))  # the first registered: the default
            models = await gw.llm.ListModels(pb.ListModelsRequest(), metadata=key(APP))
            listed = await gw.providers()
            await gw.until(lambda: _health_is(gw, "echo", health_pb2.HealthCheckResponse.SERVING))
    assert before.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "none is registered" in (before.value.details() or "")
    tokens = [c for c in chunks if c.token]
    assert "".join(c.token for c in tokens) == WORDS
    for chunk, word in zip(tokens, WORDS.split(), strict=True):
        assert chunk.signal.confidence == pytest.approx(0.75)
        assert chunk.signal.entropy == pytest.approx(0.5)
        assert chunk.signal.top_gap == pytest.approx(0.5)
        assert [(c.text, round(c.prob, 2)) for c in chunk.signal.top_k] == [(word, 0.75), ("...", 0.25)]
    last = chunks[-1]
    assert last.done
    assert last.provider == "echo"
    assert last.model == "echo-1"
    assert (last.prompt_tokens, last.completion_tokens) == (9, 9)
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert reply.content == WORDS
    assert [(m.id, m.provider) for m in models.models] == [("echo-1", "echo")]
    echo_entry = listed["echo"]
    assert echo_entry.registered
    assert echo_entry.is_default
    assert echo_entry.service == "protocol"
    assert echo_entry.target == plugin.target
    assert list(echo_entry.models) == ["echo-1"]
    assert echo_entry.health == "serving"
    assert 0 < echo_entry.lease_left_s <= 10


async def test_a_plugin_that_stops_deregisters_and_is_no_longer_routed_to() -> None:
    async with gateway() as gw:
        async with running_plugin("--register", gw.target, admin_key=OPS):
            assert "echo" in await gw.providers()
        # stop() sent SIGTERM: the plugin deregistered before it exited
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await gw.llm.Chat(echo(provider="echo"), metadata=key(APP))
        assert "echo" not in await gw.providers()
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("admin_key", "code"),
    [(APP, "PERMISSION_DENIED"), ("", "UNAUTHENTICATED"), ("not-a-key", "UNAUTHENTICATED")],
    ids=["not an admin", "no key", "an unknown key"],
)
async def test_registering_needs_the_admin_key(admin_key: str, code: str) -> None:
    async with gateway() as gw:
        async with running_plugin("--register", gw.target, admin_key=admin_key) as plugin:
            assert await asyncio.to_thread(plugin.proc.wait, 10) == 2
            assert plugin.said.startswith(f"echo_plugin: registration refused: {code}"), plugin.said
        assert "echo" not in await gw.providers()


async def test_a_target_the_allowed_hosts_do_not_admit_is_refused() -> None:
    # registry.allowed_hosts unset: no loopback targets
    async with gateway(registry={}) as gw, running_plugin() as plugin:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.registry.RegisterProvider(
                reg_pb.RegisterProviderRequest(name="echo", target=plugin.target), metadata=key(OPS)
            )
        with pytest.raises(grpc.aio.AioRpcError) as metadata_endpoint:
            await gw.registry.RegisterProvider(
                reg_pb.RegisterProviderRequest(name="imds", target="169.254.169.254:80"),
                metadata=key(OPS),
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "registry.allowed_hosts" in (refused.value.details() or "")
    assert metadata_endpoint.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "metadata" in (metadata_endpoint.value.details() or "")


async def test_bad_registrations_say_what_was_wrong() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with gateway(registry={"allowed_hosts": ["127.0.0.1"], "connect_timeout_s": 1}) as gw:
        cases = {
            "Echo!": ("target", dead, grpc.StatusCode.INVALID_ARGUMENT, "not a provider name"),
            "no-port": ("target", "127.0.0.1", grpc.StatusCode.INVALID_ARGUMENT, "host:port"),
            "dead": ("target", dead, grpc.StatusCode.UNAVAILABLE, "nothing answered"),
        }
        seen = {}
        for name, (_, target, _, _) in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gw.registry.RegisterProvider(
                    reg_pb.RegisterProviderRequest(name=name, target=target), metadata=key(OPS)
                )
            seen[name] = refused.value
        with pytest.raises(grpc.aio.AioRpcError) as renew:
            await gw.registry.RenewLease(
                reg_pb.RenewLeaseRequest(lease_id="no-such-lease"), metadata=key(OPS)
            )
    for name, (_, _, code, words) in cases.items():
        assert seen[name].code() == code, (name, seen[name])
        assert words in (seen[name].details() or ""), (name, seen[name].details())
    assert renew.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register again" in (renew.value.details() or "")


async def test_a_lapsed_lease_drops_the_plugin_and_it_comes_back_when_it_registers_again() -> None:
    lease = ("--lease-s", "1")
    async with gateway() as gw, running_plugin("--register", gw.target, *lease, admin_key=OPS) as plugin:
        assert (await gw.llm.Chat(echo(provider="echo"), metadata=key(APP))).content == WORDS
        plugin.proc.send_signal(signal.SIGSTOP)  # it stops renewing (and serving)
        try:
            await gw.until(lambda: _absent(gw, "echo"), timeout_s=5)  # a 1 s lease, swept every 0.25 s
            with pytest.raises(grpc.aio.AioRpcError) as dropped:
                await gw.llm.Chat(echo(provider="echo"), metadata=key(APP))
            await gw.until(lambda: _health_is(gw, "echo", None), timeout_s=2)
        finally:
            plugin.proc.send_signal(signal.SIGCONT)
        # its next renewal is NOT_FOUND: it registers again, as the same name
        await gw.until(lambda: _present(gw, "echo"), timeout_s=10)
        back = await gw.llm.Chat(echo(provider="echo"), metadata=key(APP))
    assert dropped.value.code() == grpc.StatusCode.NOT_FOUND
    assert back.content == WORDS


async def test_a_plugin_killed_mid_stream_is_unavailable_at_once_and_not_serving() -> None:
    async with (
        gateway() as gw,
        running_plugin(
            "--register", gw.target, "--delay-ms", "200", "--lease-s", "30", admin_key=OPS
        ) as plugin,
    ):
        call = gw.llm.StreamChat(echo(provider="echo"), metadata=key(APP))
        first = await anext(aiter(call))
        plugin.proc.send_signal(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            async for _ in call:
                pass
        took = time.monotonic() - started
        await gw.until(
            lambda: _health_is(gw, "echo", health_pb2.HealthCheckResponse.NOT_SERVING), timeout_s=5
        )
        listed = (await gw.providers())["echo"]  # its lease has not lapsed: still listed, not serving
        with pytest.raises(grpc.aio.AioRpcError) as next_call:
            await gw.llm.Chat(echo(provider="echo"), metadata=key(APP), timeout=10)
    assert first.token == "the"
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE, cut.value
    assert took < 5, took
    assert listed.health == "not_serving"
    assert next_call.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_registering_a_name_again_moves_it_and_a_stream_in_flight_finishes_where_it_began() -> None:
    slow = ("--delay-ms", "100")
    async with gateway() as gw, running_plugin("--register", gw.target, *slow, admin_key=OPS) as old:
        call = gw.llm.StreamChat(echo(provider="echo"), metadata=key(APP))
        first = await anext(aiter(call))
        async with running_plugin("--register", gw.target, "--model", "echo-2", admin_key=OPS) as new:
            rest = [c async for c in call]
            moved = await gw.llm.Chat(echo(provider="echo"), metadata=key(APP))
            listed = (await gw.providers())["echo"]
    assert first.token + "".join(c.token for c in rest) == WORDS
    assert rest[-1].model == "echo-1"  # the old registration's plugin finished it
    assert moved.model == "echo-2"
    assert listed.target == new.target != old.target


async def test_a_second_llmservice_registers_and_its_stream_is_the_direct_one(
    service: Service, stub: pb_grpc.LLMServiceStub
) -> None:
    """Any LLMService can register: the shared service on the bundled model (llmservice.v1,
    found by reflection), its listing, token signals and usage forwarded intact."""
    request = greedy(signal_options=pb.SignalOptions(top_k=3))
    direct = [c async for c in stub.StreamChat(request)]
    async with gateway() as gw:
        registered = await gw.registry.RegisterProvider(
            reg_pb.RegisterProviderRequest(name="gpu", target=service.target, lease_s=60), metadata=key(OPS)
        )
        forwarded = [c async for c in gw.llm.StreamChat(request, metadata=key(APP))]
        models = await gw.llm.ListModels(pb.ListModelsRequest(), metadata=key(APP))
        await gw.registry.DeregisterProvider(
            reg_pb.DeregisterProviderRequest(lease_id=registered.lease_id), metadata=key(OPS)
        )
        gone = await gw.providers()
    assert registered.provider.service == "llmservice.v1"
    assert registered.lease_s == 60
    assert registered.provider.is_default
    assert without_timing(forwarded) == without_timing(direct)
    assert forwarded[-1].provider == "gpu"
    assert "5" in "".join(c.token for c in forwarded)
    assert [m.provider for m in models.models]
    assert {m.provider for m in models.models} == {"gpu"}
    assert "gpu" not in gone


async def test_a_replica_announces_itself_and_deregisters_as_it_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second `llmservice serve` on the bundled model with announce.* set joins the
    gateway by itself, and leaves it as it stops, long before its lease would lapse."""
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", OPS)
    async with gateway() as gw:
        announcing = llmservice_serve(
            f"announce.to={gw.target}",
            "announce.name=gpu",
            "announce.key_env=GATEWAY_ADMIN_KEY",
            "announce.lease_s=300",
            "llamacpp.n_threads=1",
        )
        replica = await asyncio.to_thread(announcing.__enter__)
        try:
            await gw.until(lambda: _present(gw, "gpu"), timeout_s=30)
            reply = await gw.llm.Chat(greedy(provider="gpu"), metadata=key(APP))
            listed = (await gw.providers())["gpu"]
        finally:
            await asyncio.to_thread(announcing.__exit__, None, None, None)
        gone = await gw.providers()
    assert "5" in reply.content
    assert reply.provider == "gpu"
    assert listed.service == "llmservice.v1"
    assert listed.target == replica.target
    assert listed.lease_left_s > 200
    assert "gpu" not in gone


async def test_a_dead_configured_backend_shows_in_health_and_its_route_fails_over(service: Service) -> None:
    dead = f"127.0.0.1:{free_port()}"
    deployment = {"provider": "grpc", "max_attempts": 1, "connect_timeout_s": 1, "model": "m"}
    async with gateway(
        deployments={
            "down": {**deployment, "target": dead},
            "up": {**deployment, "target": service.target, "model": ""},
        },
        routes={"chat": ["down", "up"]},
        provider="down",
    ) as gw:
        await gw.until(lambda: _health_is(gw, "down", health_pb2.HealthCheckResponse.NOT_SERVING))
        reply = await gw.llm.Chat(greedy(model="chat"), metadata=key(APP))
        up = await gw.health_of("up")
        listed = await gw.providers()
        async with running_shim(gw.target, "127.0.0.1", 0) as port, httpx.AsyncClient() as http:
            health = (await http.get(f"http://127.0.0.1:{port}/health")).json()
    assert "5" in reply.content
    assert up == health_pb2.HealthCheckResponse.SERVING
    assert listed["down"].health == "not_serving"
    assert listed["down"].is_default
    assert not listed["down"].registered
    assert health == {"status": "ok", "providers": {"down": "unavailable", "up": "ok"}}


async def _absent(gw: Gateway, name: str) -> bool:
    return name not in await gw.providers()


async def _present(gw: Gateway, name: str) -> bool:
    return name in await gw.providers()


async def _health_is(gw: Gateway, name: str, status: Any) -> bool:
    return bool(await gw.health_of(name) == status)
