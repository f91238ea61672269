"""Command line: `llmservice serve` runs the service, `llmservice chat` talks to a running one,
`llmservice models pull|list|rm` manages local GGUF files, `llmservice models load|unload`
asks a running service to load or unload a model, `llmservice providers` lists the
provider kinds installed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from llmservice.kernel.errors import LLMServiceError
from llmservice.kernel.settings import SettingsError
from llmservice.service.settings import load_settings

if TYPE_CHECKING:
    from llmservice.providers.llamacpp.settings import LlamaCppSettings

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingsError as exc:
        print(f"llmservice: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmservice", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--config", type=Path, help="TOML settings file (default: ./llm.toml when present)")
    serve.add_argument("--grpc-port", type=int, help="port to listen on; 0 picks a free one and prints it")
    serve.add_argument(
        "--http-port",
        type=int,
        help="the HTTP shim's port (default 8000); 0 picks a free one, -1 runs no shim",
    )
    serve.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set llamacpp.n_ctx=8192 (repeatable)",
    )
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # set by the supervisor (llmservice.workers)
    serve.set_defaults(run=_serve)

    shim = commands.add_parser("shim", help="run the HTTP shim alone, in front of a running service")
    shim.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the service")
    shim.add_argument("--host", default="127.0.0.1")
    shim.add_argument("--http-port", type=int, default=8000, help="0 picks a free port and prints it")
    shim.set_defaults(run=_shim)

    chat = commands.add_parser("chat", help="stream a reply from a running service")
    chat.add_argument("prompt")
    chat.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the service")
    chat.add_argument("--system", default="", help="system message")
    chat.add_argument("--model", default="")
    chat.add_argument("--provider", default="")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--max-tokens", type=int, default=0)
    chat.add_argument("--seed", type=int)
    chat.set_defaults(run=_chat)

    providers = commands.add_parser("providers", help="the provider kinds installed (third-party ones too)")
    providers.add_argument(
        "--reference", action="store_true", help="every setting of every kind (docs/providers.md)"
    )
    providers.set_defaults(run=_providers)
    _models_parser(commands)
    return parser


def _providers(args: argparse.Namespace) -> int:
    from llmservice.providers import entries
    from llmservice.providers.reference import reference, summary

    print((reference if args.reference else summary)(entries().values()), end="")
    return 0


def _models_parser(commands: Any) -> None:
    models = commands.add_parser("models", help="local GGUF models in llamacpp.cache_dir: pull, list, rm")
    models.add_argument("--config", type=Path, help="TOML settings file (default: ./llm.toml when present)")
    models.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    actions = models.add_subparsers(required=True, metavar="ACTION")
    pull = actions.add_parser("pull", help="download a GGUF (resumes a partial download)")
    pull.add_argument("url", help="http(s) URL of a GGUF file, or hf://OWNER/REPO/FILE.gguf[@REVISION]")
    pull.add_argument("--sha256", default="", help="expected SHA-256; a mismatch deletes the file")
    pull.add_argument("--name", default="", help="file name to store it under (default: the URL's)")
    pull.set_defaults(run=_models_pull)
    actions.add_parser("list", help="the models downloaded").set_defaults(run=_models_list)
    rm = actions.add_parser("rm", help="delete a downloaded model")
    rm.add_argument("name")
    rm.set_defaults(run=_models_rm)
    for action, run, help_text in (
        ("load", _models_load, "load a model in a running service (ModelAdminService)"),
        ("unload", _models_unload, "unload a model in a running service once its requests end"),
    ):
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument("model", nargs="?", default="", help="model id (default: the provider's default)")
        sub.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the service")
        sub.add_argument("--provider", default="", help="provider (default: the service's default)")
        sub.add_argument("--key-file", type=Path, help="file holding an admin principal's API key")
        if action == "load":
            sub.add_argument(
                "--default",
                action="store_true",
                help="make it the default model (streams on the old one finish)",
            )
        sub.set_defaults(run=run)


def _models_dir(args: argparse.Namespace) -> Path:
    return _llamacpp(args).cache_dir


def _llamacpp(args: argparse.Namespace) -> LlamaCppSettings:
    from llmservice.providers.llamacpp.settings import LlamaCppSettings

    section = load_settings(args.config, args.overrides).section("llamacpp")
    assert isinstance(section, LlamaCppSettings)
    return section


def _models_pull(args: argparse.Namespace) -> int:
    from llmservice.providers.llamacpp import pulling, store

    shown = [-1]

    def progress(done: int, total: int | None) -> None:
        percent = 100 * done // total if total else -1
        if percent != shown[0]:
            shown[0] = percent
            size = f"{done >> 20}/{total >> 20} MB ({percent}%)" if total else f"{done >> 20} MB"
            print(f"\rpulling {size}", end="", file=sys.stderr, flush=True)

    section = _llamacpp(args)
    try:
        found = pulling.resolve(args.url, args.sha256)  # an hf:// source asks the Hub where and what
        name = args.name or found.name
        path = store.pull(
            found.url,
            section.cache_dir,
            urls=section.pull_policy(),
            sha256=found.sha256,
            name=name,
            progress=progress,
        )
    except (store.StoreError, LLMServiceError) as exc:  # the latter: a URL the policy refused
        print(f"\nllmservice models pull: {exc}", file=sys.stderr)
        return 1
    verified = "sha256 verified" if found.sha256 else "no sha256 given: not verified"
    print(
        f"\n{path} ({verified}); the service serves it as model {path.stem!r} "
        f"(or as the default: --set llamacpp.model_path={path})",
        file=sys.stderr,
    )
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from llmservice.providers.llamacpp import store

    for model in store.list_models(_models_dir(args)):
        print(f"{model.name}\t{model.size_bytes}\t{model.path}")
    return 0


def _models_rm(args: argparse.Namespace) -> int:
    from llmservice.providers.llamacpp import store

    try:
        path = store.remove(_models_dir(args), args.name)
    except store.StoreError as exc:
        print(f"llmservice models rm: {exc}", file=sys.stderr)
        return 1
    print(f"removed {path}", file=sys.stderr)
    return 0


def _admin_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One ModelAdminService call; prints the error and returns None when it fails."""
    from llmservice._pb.llmservice.v1 import model_admin_pb2_grpc as admin_grpc

    metadata = [("authorization", f"Bearer {args.key_file.read_text().strip()}")] if args.key_file else []
    with grpc.insecure_channel(args.target) as channel:
        try:
            return getattr(admin_grpc.ModelAdminServiceStub(channel), method)(request, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"llmservice models: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return None


def _models_load(args: argparse.Namespace) -> int:
    from llmservice._pb.llmservice.v1 import model_admin_pb2 as admin_pb

    request = admin_pb.LoadModelRequest(provider=args.provider, model=args.model, make_default=args.default)
    done = _admin_call(args, "LoadModel", request)
    if done is None:
        return 1
    state = "was loaded already" if done.was_loaded else "loaded"
    print(f"{done.provider}/{done.model}: {state}" + (", the default model" if done.is_default else ""))
    return 0


def _models_unload(args: argparse.Namespace) -> int:
    from llmservice._pb.llmservice.v1 import model_admin_pb2 as admin_pb

    done = _admin_call(
        args, "UnloadModel", admin_pb.UnloadModelRequest(provider=args.provider, model=args.model)
    )
    if done is None:
        return 1
    print(f"{done.provider}/{done.model}: " + ("unloading" if done.was_loaded else "was not loaded"))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from llmservice.app import serve

    overrides = list(args.overrides)
    if args.grpc_port is not None:
        overrides.append(f"server.grpc_port={args.grpc_port}")
    if args.http_port is not None:
        overrides.append(f"server.http_port={args.http_port}")
    settings = load_settings(args.config, overrides)
    from llmservice.observability.logs import configure_logging, secrets_of
    from llmservice.workers import WorkerRole, worker_count

    configure_logging(
        settings.log_level, settings.logs.format, secrets_of(settings), payloads=settings.logs.payloads
    )
    if args.worker:
        run_event_loop(serve(settings, WorkerRole.from_json(args.worker)))
        return 0
    count, why = worker_count(settings)
    logging.getLogger("llmservice").info("%d worker%s (%s)", count, "s" if count > 1 else "", why)
    if count > 1:
        from llmservice.workers.supervisor import supervise

        return run_event_loop(supervise(settings, count, args.config, overrides))
    run_event_loop(serve(settings))
    return 0


def _shim(args: argparse.Namespace) -> int:
    import signal

    from llmservice.app import shim_gate
    from llmservice.observability import tracing_for
    from llmservice.observability.logs import configure_logging, secrets_of
    from llmservice.rest.server import running_shim

    settings = load_settings()  # for logs.* and tracing (OTEL_*): the shim has no providers
    tracing = tracing_for(settings.tracing)

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        gate = shim_gate(settings, None)  # the service checks keys: the shim has no policy of its own
        grace = settings.server.drain_grace_s  # in-flight requests get as long as the service's
        async with running_shim(
            args.target, args.host, args.http_port, tracing, gate=gate, grace_s=grace
        ) as port:
            print(f"llmservice: HTTP shim on http://{args.host}:{port} for {args.target}", flush=True)
            await stop.wait()

    configure_logging(logging.WARNING, settings.logs.format, secrets_of(settings))
    try:
        run_event_loop(run())
    finally:
        if tracing is not None:
            tracing.shutdown()
    return 0


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop where it exists (less CPU per request), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _chat(args: argparse.Namespace) -> int:
    from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
    from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

    messages = [pb.ChatMessage(role="system", content=args.system)] if args.system else []
    messages.append(pb.ChatMessage(role="user", content=args.prompt))
    request = pb.LLMChatRequest(
        messages=messages,
        model=args.model,
        provider=args.provider,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    with grpc.insecure_channel(args.target) as channel:
        try:
            for chunk in pb_grpc.LLMServiceStub(channel).StreamChat(request):
                if chunk.done:
                    print(
                        f"\n[{chunk.completion_tokens} tokens, {pb.FinishReason.Name(chunk.finish_reason)}]",
                        file=sys.stderr,
                    )
                else:
                    print(chunk.token, end="", flush=True)
        except grpc.RpcError as exc:
            print(f"llmservice chat: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0
