"""ModelAdminService over gRPC: admin principals only; a hot swap of the default model while a
stream runs; `llmservice models load|unload`; pull and delete, pulls only from hosts the URL
policy allows and only of GGUF files; Ollama's own pull and keep-alive."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import model_admin_pb2 as admin_pb
from llmservice._pb.llmservice.v1 import model_admin_pb2_grpc as admin_grpc
from llmservice.app import running_service
from llmservice.cli import main
from llmservice.providers.llamacpp.model_file import BUNDLED_MODEL_ID
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..fakes.ollama_server import fake_ollama
from .test_model_lifecycle import BUNDLED, models_dir  # noqa: F401 -- the fixture

OPS, APP = "ops-key-0123", "app-key-4567"
Metadata = tuple[tuple[str, str], ...]


def key(value: str) -> Metadata:
    return (("authorization", f"Bearer {value}"),)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Service:
    def __init__(self, target: str, channel: grpc.aio.Channel) -> None:
        self.target = target
        self.llm = pb_grpc.LLMServiceStub(channel)
        self.admin = admin_grpc.ModelAdminServiceStub(channel)

    async def loaded(self) -> dict[str, bool]:
        models = (await self.llm.ListModels(pb.ListModelsRequest(), metadata=key(OPS))).models
        return {m.id: m.loaded for m in models}


@pytest.fixture(scope="module")
async def service(models_dir: Path) -> AsyncIterator[Service]:  # noqa: F811
    settings = Settings.model_validate(
        {
            "server": {"grpc_port": 0},
            "llamacpp": {
                "model_path": str(BUNDLED),
                "model_id": BUNDLED_MODEL_ID,
                "cache_dir": str(models_dir),
                "n_ctx": 512,
                "n_slots": 1,
                "pull_allowed_hosts": ["127.0.0.1"],  # the test's file servers; not 127.0.0.2
            },
            "auth": {
                "principals": {
                    "ops": {"key_sha256": sha(OPS), "admin": True},
                    "app": {"key_sha256": sha(APP)},
                }
            },
        }
    )
    async with (
        running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield Service(f"127.0.0.1:{server.port}", channel)


async def status_of(call: Any) -> grpc.StatusCode:
    """The status a unary or streaming call ends with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _finish(call())
    return caught.value.code()


async def _finish(result: Any) -> None:
    if hasattr(result, "__aiter__"):
        async for _ in result:
            pass
    else:
        await result


@pytest.mark.parametrize("metadata", [key(APP), ()], ids=["not an admin", "no key"])
async def test_admin_calls_are_refused_to_any_principal_but_an_admin(
    service: Service, metadata: Metadata
) -> None:
    a = service.admin
    calls = [
        lambda: a.LoadModel(admin_pb.LoadModelRequest(model="second"), metadata=metadata),
        lambda: a.UnloadModel(admin_pb.UnloadModelRequest(model=BUNDLED_MODEL_ID), metadata=metadata),
        lambda: a.PullModel(admin_pb.PullModelRequest(source="http://127.0.0.1:9/x.gguf"), metadata=metadata),
        lambda: a.DeleteModel(admin_pb.DeleteModelRequest(model="second"), metadata=metadata),
    ]
    expected = grpc.StatusCode.PERMISSION_DENIED if metadata else grpc.StatusCode.UNAUTHENTICATED
    assert [await status_of(call) for call in calls] == [expected] * 4
    assert await service.loaded() == {BUNDLED_MODEL_ID: True, "second": False}


async def test_a_hot_swap_over_grpc_leaves_a_running_stream_unchanged(service: Service) -> None:
    request = pb.LLMChatRequest(
        messages=[pb.ChatMessage(role="user", content="Count from one to twenty.")],
        max_tokens=30,
        temperature=0,
    )
    alone = [c.token async for c in service.llm.StreamChat(request, metadata=key(APP))]
    swapped, tokens = None, []
    async for chunk in service.llm.StreamChat(request, metadata=key(APP)):
        tokens.append(chunk.token)
        if len(tokens) == 3:
            swap = admin_pb.LoadModelRequest(model="second", make_default=True)
            swapped = await service.admin.LoadModel(swap, metadata=key(OPS))
    assert tokens == alone
    assert swapped is not None
    assert (swapped.provider, swapped.model, swapped.was_loaded, swapped.is_default) == (
        "llamacpp",
        "second",
        False,
        True,
    )
    after = await service.llm.Chat(pb.LLMChatRequest(user_prompt="Hi", max_tokens=2), metadata=key(APP))
    assert after.model == "second"
    assert await service.loaded() == {"second": True, BUNDLED_MODEL_ID: False}
    back = admin_pb.LoadModelRequest(model=BUNDLED_MODEL_ID, make_default=True)
    assert (await service.admin.LoadModel(back, metadata=key(OPS))).is_default


async def test_the_cli_loads_and_unloads_in_a_running_service(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "ops.key"
    key_file.write_text(OPS + "\n")
    target = ["--target", service.target, "--key-file", str(key_file)]
    assert await asyncio.to_thread(main, ["models", "load", "second", *target]) == 0
    assert (await service.loaded())["second"]
    assert await asyncio.to_thread(main, ["models", "unload", "second", *target]) == 0
    assert not (await service.loaded())["second"]
    assert await asyncio.to_thread(main, ["models", "load", "second", "--target", service.target]) == 1
    out = capsys.readouterr()
    assert "llamacpp/second: loaded" in out.out
    assert "llamacpp/second: unloading" in out.out
    assert "UNAUTHENTICATED" in out.err


TINY = b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + b"\0" * 4072  # 4096 bytes that begin as a GGUF
NOT_A_MODEL = b"not a gguf file"  # 15 bytes


@contextlib.contextmanager
def file_server(host: str, body: bytes, gets: list[str] | None = None) -> Iterator[str]:
    """The URL of a server on `host` that answers every GET with `body`, noting its path in `gets`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if gets is not None:
                gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{host}:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def gguf_server() -> Iterator[str]:
    with file_server("127.0.0.1", TINY) as url:
        yield url


async def test_pull_streams_progress_and_delete_removes_the_file(
    service: Service,
    gguf_server: str,
    models_dir: Path,  # noqa: F811
) -> None:
    pull = admin_pb.PullModelRequest(
        source=f"{gguf_server}/files/tiny.gguf", sha256=hashlib.sha256(TINY).hexdigest()
    )
    pulling = service.admin.PullModel(pull, metadata=(*key(OPS), ("x-request-id", "pull-1")))
    steps = [s async for s in pulling]
    assert ("x-request-id", "pull-1") in tuple(await pulling.trailing_metadata())
    assert [s.status for s in steps] == ["resolving", "downloading", "success"]
    assert (steps[-1].done, steps[-1].model, steps[-1].completed, steps[-1].total) == (
        True,
        "tiny",
        4096,
        4096,
    )
    assert "tiny" in await service.loaded()
    again = await status_of(lambda: service.admin.PullModel(pull, metadata=key(OPS)))
    assert again == grpc.StatusCode.INVALID_ARGUMENT  # it is there already
    gone = await service.admin.DeleteModel(admin_pb.DeleteModelRequest(model="tiny"), metadata=key(OPS))
    assert (gone.provider, gone.model) == ("llamacpp", "tiny")
    assert not (models_dir / "tiny.gguf").exists()
    missing = admin_pb.DeleteModelRequest(model="tiny")
    assert (
        await status_of(lambda: service.admin.DeleteModel(missing, metadata=key(OPS)))
        == grpc.StatusCode.NOT_FOUND
    )


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _finish(call)
    return caught.value


async def test_a_pull_from_a_host_the_policy_does_not_allow_is_refused_before_it_connects(
    service: Service,
    models_dir: Path,  # noqa: F811
) -> None:
    gets: list[str] = []
    with file_server("127.0.0.2", TINY, gets) as elsewhere:  # loopback, but not in pull_allowed_hosts
        pull = admin_pb.PullModelRequest(source=f"{elsewhere}/m.gguf")
        refused = await failure(service.admin.PullModel(pull, metadata=key(OPS)))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "127.0.0.2 is a loopback" in (refused.details() or "")
        assert "llamacpp.pull_allowed_hosts" in (refused.details() or "")
    assert gets == []
    metadata = admin_pb.PullModelRequest(source="http://169.254.169.254/latest/m.gguf")
    refused = await failure(service.admin.PullModel(metadata, metadata=key(OPS)))
    # PERMISSION_DENIED is the policy's: a connection tried there would end UNAVAILABLE
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "169.254.169.254 is a cloud metadata endpoint" in (refused.details() or "")
    assert not (models_dir / "m.gguf").exists()
    assert not (models_dir / "m.gguf.partial").exists()


async def test_a_pull_of_a_file_that_is_no_gguf_fails_and_stores_nothing(
    service: Service,
    models_dir: Path,  # noqa: F811
) -> None:
    with file_server("127.0.0.1", NOT_A_MODEL) as url:
        pull = admin_pb.PullModelRequest(source=f"{url}/files/junk.gguf")
        failed = await failure(service.admin.PullModel(pull, metadata=key(OPS)))
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "junk.gguf is not a GGUF file: it begins b'not '" in (failed.details() or "")
    assert dict(failed.trailing_metadata() or ())["llm-error-param"] == "source"
    assert not (models_dir / "junk.gguf").exists()
    assert not (models_dir / "junk.gguf.partial").exists()
    assert "junk" not in await service.loaded()


async def test_ollama_models_load_unload_pull_and_delete_through_ollama_itself() -> None:
    with fake_ollama() as upstream:
        settings = Settings.model_validate(
            {
                "provider": "ollama",
                "server": {"grpc_port": 0},
                "ollama": {"base_url": upstream.url, "model": "llama3.2:1b"},
            }
        )
        async with (
            running_service(settings, registry=ProviderRegistry.from_settings(settings)) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            admin = admin_grpc.ModelAdminServiceStub(channel)
            llm = pb_grpc.LLMServiceStub(channel)

            async def loaded() -> bool:
                return (await llm.ListModels(pb.ListModelsRequest())).models[0].loaded

            first = await admin.LoadModel(admin_pb.LoadModelRequest(model="llama3.2:1b"))
            assert (first.provider, first.was_loaded, first.is_default, await loaded()) == (
                "ollama",
                False,
                True,
                True,
            )
            assert (await admin.UnloadModel(admin_pb.UnloadModelRequest())).was_loaded
            assert not await loaded()
            steps = [s async for s in admin.PullModel(admin_pb.PullModelRequest(source="llama3.2:1b"))]
            assert [s.completed for s in steps if s.total] == [0, 500, 1000]
            assert (steps[-1].status, steps[-1].done, steps[-1].model) == ("success", True, "llama3.2:1b")
            await admin.DeleteModel(admin_pb.DeleteModelRequest(model="llama3.2:1b"))
            missing = admin_pb.DeleteModelRequest(model="nope")
            assert await status_of(lambda: admin.DeleteModel(missing)) == grpc.StatusCode.NOT_FOUND
        sent = [(r.get("model"), r.get("keep_alive")) for r in upstream.requests if "keep_alive" in r]
        assert sent == [("llama3.2:1b", "5m"), ("llama3.2:1b", 0)]
