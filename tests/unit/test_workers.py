"""server.workers: how many workers run and when several are refused, what each is told, the
workers' key to the engine worker, and their metrics served as one."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from llmservice.kernel.errors import Unauthenticated
from llmservice.kernel.settings import SettingsError
from llmservice.service.auth import AuthPolicy
from llmservice.service.settings import Settings, parse_overrides
from llmservice.workers import WorkerRole, usable_cores, worker_count
from llmservice.workers.metrics import WorkerMetrics
from llmservice.workers.supervisor import reserve_port, worker_argv

REDIS = {"cache": {"redis_url": "redis://127.0.0.1:1/0"}}


def settings(**tree: object) -> Settings:
    return Settings.model_validate(tree)


def test_auto_is_one_while_state_is_in_memory() -> None:
    count, why = worker_count(settings())
    assert count == 1
    assert "cache.redis_url" in why


def test_auto_is_one_per_core_with_redis_and_no_registry() -> None:
    count, _ = worker_count(settings(**REDIS, registry={"enabled": False}))
    assert count == min(usable_cores(), 16)


def test_auto_is_one_while_the_registry_is_on_by_default() -> None:
    count, why = worker_count(settings(**REDIS))
    assert count == 1
    assert "registry.enabled" in why


def test_auto_is_one_where_the_registry_was_asked_for() -> None:
    count, why = worker_count(settings(**REDIS, registry={"enabled": True}))
    assert count == 1
    assert "registry" in why


def test_several_without_redis_are_refused_naming_the_fix() -> None:
    with pytest.raises(SettingsError, match=r"server.workers = 3: .*cache.redis_url"):
        worker_count(settings(server={"workers": 3}))


def test_several_with_the_registry_asked_for_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"registry.enabled = false"):
        worker_count(settings(**REDIS, server={"workers": 2}, registry={"enabled": True}))


def test_a_number_asked_for_is_kept() -> None:
    assert worker_count(settings(**REDIS, server={"workers": 4}))[0] == 4
    assert worker_count(settings(server={"workers": 1}))[0] == 1


def test_a_worker_is_told_its_ports_and_runs_as_one_with_no_registry() -> None:
    role = WorkerRole(1, "unix:/tmp/x/engine.sock")
    argv = worker_argv(None, ["provider=openai", "server.grpc_port=0"], role, (5001, 8001), metrics=True)
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    tree = parse_overrides(overrides)  # a later --set wins
    assert tree["server"] == {"grpc_port": "5001", "http_port": "8001", "workers": "1", "metrics_port": "0"}
    assert tree["registry"] == {"enabled": "false"}
    assert tree["provider"] == "openai"
    assert WorkerRole.from_json(argv[argv.index("--worker") + 1]) == role


def test_roles() -> None:
    assert WorkerRole(0, "unix:/s").runs_engine
    assert not WorkerRole(0, "unix:/s").forwards_engine
    assert WorkerRole(1, "unix:/s").forwards_engine
    assert not WorkerRole(1, "").forwards_engine  # no local engine: nothing to forward


def test_the_engine_worker_admits_the_workers_key_only_where_keys_are_required() -> None:
    digest = "a" * 64
    keyed = AuthPolicy({"alice": (digest, ("*",))}).admitting("_workers", "secret")
    assert keyed.authenticate([("authorization", "Bearer secret")]).name == "_workers"
    assert not keyed.authenticate([("authorization", "Bearer secret")]).admin
    with pytest.raises(Unauthenticated):
        keyed.authenticate([("authorization", "Bearer other")])
    assert AuthPolicy({}).admitting("_workers", "secret").open  # open mode stays open
    alone = AuthPolicy({"alice": (digest, ("*",))})
    assert alone.admitting("_workers", "") is alone  # no key: nothing admitted


def test_a_port_in_use_is_refused_and_a_reserved_one_can_be_shared() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SettingsError, match=r"cannot listen on 127\.0\.0\.1"):
            reserve_port("127.0.0.1", taken.getsockname()[1])
    with reserve_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with socket.socket() as worker:  # a worker binds it the same way
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()


@pytest.fixture
def two_workers() -> Iterator[list[tuple[int, str]]]:
    servers = []
    for served in (3, 5):
        registry = CollectorRegistry()
        Counter("llmservice_requests", "Calls", ["method"], registry=registry).labels("Chat").inc(served)
        Gauge("llmservice_queue_depth", "Waiting", registry=registry).set(served)
        http, thread = start_http_server(0, "127.0.0.1", registry=registry)
        servers.append((http, thread))
    yield [(i, f"http://127.0.0.1:{http.server_port}/metrics") for i, (http, _) in enumerate(servers)]
    for http, thread in servers:
        http.shutdown()
        http.server_close()
        thread.join(5)


def test_every_workers_series_comes_labelled_and_a_silent_one_reads_down(
    two_workers: list[tuple[int, str]],
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{closed.getsockname()[1]}/metrics"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetrics([*two_workers, (2, gone)]))
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("llmservice_requests_total", (("method", "Chat"), ("worker", "0")))] == 3
    assert samples[("llmservice_requests_total", (("method", "Chat"), ("worker", "1")))] == 5
    assert samples[("llmservice_queue_depth", (("worker", "1"),))] == 5
    assert samples[("llmservice_worker_up", (("worker", "0"),))] == 1
    assert samples[("llmservice_worker_up", (("worker", "2"),))] == 0
    assert text.count("# TYPE llmservice_requests_total counter") == 1  # one family, both workers
